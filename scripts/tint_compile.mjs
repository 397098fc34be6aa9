#!/usr/bin/env node
// Compiles every .wgsl file in DIR with Dawn for Node (the `webgpu` npm package under PREFIX) on
// its null backend: a device with shader-f16 and WebGPU's default limits; each shader module's
// compilation messages, then a compute pipeline from its `main`. Used by scripts/check_tint.
//   node scripts/tint_compile.mjs PREFIX DIR
import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const [prefix, dir] = process.argv.slice(2);
const { create, globals } = createRequire(join(prefix, "node_modules", "/"))("webgpu");
Object.assign(globalThis, globals);
// Kept in a binding: a collected instance takes its devices down with it.
const gpu = create(["backend=null"]);
const adapter = await gpu.requestAdapter();
if (!adapter?.features.has("shader-f16")) throw new Error("Dawn's null adapter has no shader-f16");
const device = await adapter.requestDevice({ requiredFeatures: ["shader-f16"] });
let failed = 0;
const files = readdirSync(dir).filter((f) => f.endsWith(".wgsl")).sort();
for (const file of files) {
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ code: readFileSync(join(dir, file), "utf8"), label: file });
  const messages = (await module.getCompilationInfo()).messages.map((m) => `${m.type} ${m.lineNum}:${m.linePos} ${m.message}`);
  let pipeline = "";
  try {
    await device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
  } catch (error) {
    pipeline = error.message;
  }
  const scope = (await device.popErrorScope())?.message ?? "";
  const ok = !messages.some((m) => m.startsWith("error")) && !pipeline && !scope;
  failed += ok ? 0 : 1;
  console.log(`${ok ? "ok  " : "FAIL"} ${file}${[...messages, pipeline, scope].filter(Boolean).map((m) => `\n     ${m}`).join("")}`);
}
console.log(`tint: ${files.length - failed} of ${files.length} variants compiled (${files.filter((f) => f.includes("-f16-")).length} in f16)`);
device.destroy();
process.exit(failed || !files.length ? 1 : 0);
