import type { Logger } from 'pino';
import type { AppliedWebhooks } from '../store/store.js';
import { OWNS_EVERYTHING, type ControlMessage, type Topology } from './topology.js';

/** One process owns every delegation and applies every webhook it records (the embedded SQLite store). */
export class SingleNode implements Topology {
  readonly shared = false;
  readonly clusterLoad = null;

  constructor(
    readonly applied: AppliedWebhooks,
    private readonly logger: Logger,
  ) {}

  owns(): boolean {
    return true;
  }

  announce(message: ControlMessage): Promise<void> {
    return OWNS_EVERYTHING.announce(message);
  }

  async start(parts: Parameters<Topology['start']>[0]): Promise<void> {
    await parts.engine.start();
    const replayed = await parts.intake.recover();
    if (replayed) this.logger.info({ replayed }, 'applied webhooks recorded before the last stop');
  }

  async stop(): Promise<void> {}
}
