#!/usr/bin/env node
import closeWithGrace from 'close-with-grace';
import { buildApp, type Daemon } from './app.js';
import { REGISTRATION_USAGE, parseRegistrationArgs, registrationYaml } from './appservice/registration.js';
import { ConfigError, USAGE, loadConfig, parseArgs } from './config.js';

async function main(): Promise<void> {
  if (process.argv[2] === 'registration') {
    printRegistration(process.argv.slice(3));
    return;
  }
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

  // lk-jwt-service's LIVEKIT_INSECURE_SKIP_VERIFY_TLS covers every outgoing HTTPS connection; Node's own switch
  // does exactly that, read at each TLS connect.
  if (config.tlsSkipVerify) process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
  const daemon = await buildApp(config);
  const { logger } = daemon;
  for (const notice of config.notices) logger.warn(notice);
  if (!config.tokenKey) logger.warn('SIDECAR_TOKEN_KEY is not set: future tokens and delay ids are stored unencrypted');
  if (config.dev) logger.warn('--dev: development defaults (devkey: secret, any homeserver, private addresses allowed); not for production');

  // A second signal exits at once (close-with-grace); the first one drains within the configured deadline.
  closeWithGrace({ delay: config.shutdownTimeoutMs + 5_000, logger: { error: (m: unknown) => logger.error(m) } }, async ({ signal, err }) => {
    if (err) logger.error({ err }, 'fatal error, shutting down');
    else logger.info({ signal }, 'signal received');
    await daemon.shutdown();
  });

  await daemon.start();
  const address = await listen(daemon.app, config.host, config.port);
  logger.info({ address, store: config.store.kind }, 'futures-sidecar listening');
}

/** `futures-sidecar registration --url URL`: the application-service registration on stdout. */
function printRegistration(argv: string[]): void {
  const input = parseRegistrationArgs(argv, process.env);
  if (Array.isArray(input)) {
    console.error(`futures-sidecar registration:\n  - ${input.join('\n  - ')}\n\n${REGISTRATION_USAGE}`);
    process.exit(2);
  }
  process.stdout.write(registrationYaml(input));
}

/** `::` (lk-jwt-service's `:port`) falls back to 0.0.0.0 where IPv6 is off, as lk-jwt-service does. */
async function listen(app: Daemon['app'], host: string, port: number): Promise<string> {
  try {
    return await app.listen({ host, port });
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (host !== '::' || (code !== 'EAFNOSUPPORT' && code !== 'EADDRNOTAVAIL')) throw err;
    return app.listen({ host: '0.0.0.0', port });
  }
}

main().catch((err: unknown) => {
  console.error('futures-sidecar failed to start:', err instanceof Error ? err.message : err);
  process.exit(1);
});
