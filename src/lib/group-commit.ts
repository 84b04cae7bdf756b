/**
 * Group commit: items submitted in the same event-loop turn are committed together, and each submitter's promise
 * settles with its own result once that commit is done (or with the commit's error). `flush` commits what is queued
 * at once, for a read that must see every write made before it; with a synchronous `commit` it is synchronous too.
 */
export class GroupCommit<T, R> {
  private queued: Array<{ item: T; resolve: (r: R) => void; reject: (err: unknown) => void }> = [];

  /** `commit` returns one result per item, in order. */
  constructor(private readonly commit: (items: T[]) => R[] | Promise<R[]>) {}

  submit(item: T): Promise<R> {
    return new Promise((resolve, reject) => {
      if (this.queued.length === 0) setImmediate(() => void this.flush());
      this.queued.push({ item, resolve, reject });
    });
  }

  flush(): void | Promise<void> {
    if (this.queued.length === 0) return;
    const batch = this.queued;
    this.queued = [];
    const settle = (results: R[]): void => batch.forEach((b, i) => b.resolve(results[i]!));
    const fail = (err: unknown): void => batch.forEach((b) => b.reject(err));
    let results: R[] | Promise<R[]>;
    try {
      results = this.commit(batch.map((b) => b.item));
    } catch (err) {
      fail(err);
      return;
    }
    if (results instanceof Promise) return results.then(settle, fail);
    settle(results);
  }
}
