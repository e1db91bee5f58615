// Builds the page into dist/ (committed; the devset binary embeds it). `npm run dev` serves the
// sources with hot reload and sends /api to a local `devset api --auth=none` (DEVSET_API, by
// default 127.0.0.1:8082).
import { defineConfig } from 'vite';

const api = process.env.DEVSET_API ?? 'http://127.0.0.1:8082';

export default defineConfig({
  base: '/',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact', legalComments: 'none' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2022',
    modulePreload: { polyfill: false },
    reportCompressedSize: true,
    assetsInlineLimit: 0,
    rollupOptions: {
      output: {
        entryFileNames: 'assets/[name]-[hash].js',
        chunkFileNames: 'assets/[name]-[hash].js',
        assetFileNames: 'assets/[name]-[hash][extname]',
      },
    },
  },
  server: {
    port: 5173,
    proxy: { '/api': { target: api, changeOrigin: false } },
  },
});
