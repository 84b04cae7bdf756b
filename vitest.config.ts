import { defineConfig } from 'vitest/config';

// Two cores on CI: more workers only fight over them and make timing-sensitive integration tests flaky.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
