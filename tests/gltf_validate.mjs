// Validate one .glb or .gltf with the Khronos glTF validator and print its report as JSON.
// Usage: node tests/gltf_validate.mjs MODULE_DIR FILE
//   MODULE_DIR: the npm prefix gltf-validator was installed into (tests/test_gltf_valid.py).
// External resources of a .gltf (buffers, images) are read from beside the file.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { createRequire } from "node:module";

const [moduleDir, file] = process.argv.slice(2);
const require = createRequire(path.resolve(moduleDir, "package.json"));
const validator = require("gltf-validator");

const bytes = new Uint8Array(await readFile(file));
const report = await validator.validateBytes(bytes, {
  uri: path.basename(file),
  maxIssues: 100,
  externalResourceFunction: async (uri) =>
    new Uint8Array(await readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)))),
});
process.stdout.write(JSON.stringify(report));
