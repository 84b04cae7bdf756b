#!/usr/bin/env node
import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { ConfigError, USAGE, loadConfig, parseArgs } from './config.js';

async function main(): Promise<void> {
  let config;
  try {
    const args = parseArgs(process.argv.slice(2), process.env);
    if (args.help) {
      console.log(USAGE);
      return;
    }
    config = loadConfig(args.env, { dev: args.dev });
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`futures-sidecar: ${err.message}\n\n${USAGE}`);
      process.exit(2);
    }
    throw err;
  }

  const daemon = await buildApp(config);
  const { logger } = daemon;
  if (!config.tokenKey) logger.warn('SIDECAR_TOKEN_KEY is not set: future tokens and delay ids are stored unencrypted');
  if (config.dev) logger.warn('--dev: development defaults (devkey: secret, any homeserver, private addresses allowed); not for production');

  // A second signal exits at once (close-with-grace); the first one drains within the configured deadline.
  closeWithGrace({ delay: config.shutdownTimeoutMs + 5_000, logger: { error: (m: unknown) => logger.error(m) } }, async ({ signal, err }) => {
    if (err) logger.error({ err }, 'fatal error, shutting down');
    else logger.info({ signal }, 'signal received');
    await daemon.shutdown();
  });

  await daemon.start();
  const address = await daemon.app.listen({ host: config.host, port: config.port });
  logger.info({ address, store: config.store.kind }, 'futures-sidecar listening');
}

main().catch((err: unknown) => {
  console.error('futures-sidecar failed to start:', err instanceof Error ? err.message : err);
  process.exit(1);
});
