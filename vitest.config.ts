import { defineConfig } from 'vitest/config';

// Two cores on CI: more workers only fight over them and make timing-sensitive integration tests flaky.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    // Condition waits in tests (waitFor) default to 20 s; a test must outlive one on a loaded machine.
    testTimeout: 60_000,
    // The JSON report lets .ci/run print a plain "N passed, N failed" closing line.
    reporters: ['default', 'json'],
    outputFile: { json: 'coverage/test-results.json' },
    // Hooks start daemons, Redis and fakes as processes: on a loaded machine each may take seconds.
    hookTimeout: 60_000,
  },
});
