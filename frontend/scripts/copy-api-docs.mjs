// Copies the API docs' assets (Swagger UI, ReDoc) from node_modules into dist/api-docs/, so
// the services serve /docs and /redoc with no CDN: a closed network still has its API docs.
import { copyFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "dist", "api-docs");
mkdirSync(out, { recursive: true });

const swagger = dirname(require.resolve("swagger-ui-dist/package.json"));
const redoc = dirname(require.resolve("redoc/package.json"));
const files = [
  [swagger, "swagger-ui-bundle.js"],
  [swagger, "swagger-ui.css"],
  [swagger, "favicon-32x32.png"],
  [swagger, "LICENSE", "swagger-ui.LICENSE"],
  [join(redoc, "bundles"), "redoc.standalone.js"],
  [redoc, "LICENSE", "redoc.LICENSE"],
];
for (const [dir, name, target] of files) {
  copyFileSync(join(dir, name), join(out, target ?? name));
}
console.log(`API docs assets in ${out}`);
