import { defineConfig } from 'vitest/config';

// Two cores on CI: more workers only fight over them and make timing-sensitive integration tests flaky.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 30_000,
    // The JSON report lets .ci/run print a plain "N passed, N failed" closing line.
    reporters: ['default', 'json'],
    outputFile: { json: 'coverage/test-results.json' },
    hookTimeout: 30_000,
  },
});
