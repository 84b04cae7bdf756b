import type { Delegation } from './model.js';

/**
 * Shared copies of the strings that repeat across delegations (homeserver, room, action names, enum values), so that
 * a million delegations hold one copy each instead of one per row.
 */
export class StringPool {
  private readonly strings = new Map<string, string>();
  private readonly actions = new Map<string, Readonly<Delegation['actions']>>();

  intern<T extends string>(v: T): T {
    const have = this.strings.get(v);
    if (have !== undefined) return have as T;
    this.strings.set(v, v);
    return v;
  }

  /**
   * The in-memory form of a delegation. Loaded and registered objects are fresh, so they are compacted in place
   * rather than copied.
   */
  compact(d: Delegation): Delegation {
    const actionsKey = `${d.actions.leave}\u0000${d.actions.connection_lost}`;
    let actions = this.actions.get(actionsKey);
    if (!actions) this.actions.set(actionsKey, (actions = Object.freeze({ ...d.actions })));
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
}
