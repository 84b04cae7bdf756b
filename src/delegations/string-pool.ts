import { InternTable } from '../lib/intern-table.js';
import type { Delegation } from './model.js';

/**
 * Shared copies of the strings that repeat across delegations (homeserver, room, action names, enum values), so that
 * a million delegations hold one copy each instead of one per row. Strings that only ended delegations used are
 * forgotten by `sweep`.
 */
export class StringPool {
  private readonly strings = new InternTable<string>();
  private readonly actions = new InternTable<Readonly<Delegation['actions']>>();

  intern<T extends string>(v: T): T {
    return this.strings.get(v, (s) => s) as T;
  }

  /**
   * The in-memory form of a delegation. Loaded and registered objects are fresh, so they are compacted in place
   * rather than copied.
   */
  compact(d: Delegation): Delegation {
    const actions = this.actions.get(actionsKeyOf(d.actions), () => Object.freeze({ ...d.actions }));
    d.homeserver = this.intern(d.homeserver);
    d.room = this.intern(d.room);
    if (d.altRoom !== null) d.altRoom = this.intern(d.altRoom);
    d.state = this.intern(d.state);
    d.dialect = this.intern(d.dialect);
    d.source = this.intern(d.source);
    if (d.pendingAction !== null) d.pendingAction = this.intern(d.pendingAction);
    d.actions = actions;
    return d;
  }

  /** Keeps only the strings the `live` delegations use. */
  sweep(live: () => Iterable<Delegation>): void {
    this.strings.sweep(
      (function* () {
        for (const d of live()) {
          yield d.homeserver;
          yield d.room;
          if (d.altRoom !== null) yield d.altRoom;
          yield d.state;
          yield d.dialect;
          yield d.source;
          if (d.pendingAction !== null) yield d.pendingAction;
        }
      })(),
    );
    this.actions.sweep(
      (function* () {
        for (const d of live()) yield actionsKeyOf(d.actions);
      })(),
    );
  }
}

function actionsKeyOf(actions: Delegation['actions']): string {
  return `${actions.leave}\u0000${actions.connection_lost}`;
}
