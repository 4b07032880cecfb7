import react from '@vitejs/plugin-react';
import { defineConfig } from 'vitest/config';

// The console is served by ui_iot at `/`, so the API is same-origin. `npm run dev`
// proxies the API paths to a locally running ui_iot (UI_PORT, default 8000).
const apiTarget = `http://127.0.0.1:${process.env.UI_PORT ?? '8000'}`;

export default defineConfig({
  plugins: [react()],
  base: '/',
  server: {
    proxy: {
      '/auth': apiTarget,
      '/customer': apiTarget,
    },
  },
  build: {
    outDir: 'dist',
    sourcemap: true,
  },
  test: {
    environment: 'jsdom',
    setupFiles: ['./src/test/setup.ts'],
    include: ['src/**/*.test.{ts,tsx}'],
    restoreMocks: true,
  },
});
