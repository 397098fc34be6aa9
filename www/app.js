// The demo page. At this stage: open the GPU through imvar's wasm and show what it offers.
import init, { capabilities } from "./pkg/imvar.js";

const status = document.getElementById("gpu-status");
const report = document.getElementById("gpu-report");

const LABELS = {
  adapter: "Adapter",
  vendor: "Vendor",
  device_type: "Device type",
  backend: "Backend",
  driver: "Driver",
  compute_dtype: "Compute precision",
  shader_f16: "shader-f16",
  timestamp_query: "timestamp-query",
  subgroups: "Subgroups",
  max_buffer_size: "Largest buffer",
  max_storage_buffer_binding_size: "Largest storage binding",
  max_compute_workgroup_storage_size: "Workgroup memory",
  max_compute_invocations_per_workgroup: "Invocations per workgroup",
};

function formatValue(key, value) {
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (key.startsWith("max_") && key.endsWith("size")) return formatBytes(value);
  if (key === "compute_dtype") return value === "f16" ? "f16 (half precision)" : "f32 (full precision)";
  return value === "" ? "—" : String(value);
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
}

function showReport(caps) {
  const body = report.querySelector("tbody");
  body.replaceChildren(...Object.entries(LABELS).map(([key, label]) => {
    const row = document.createElement("tr");
    const th = document.createElement("th");
    const td = document.createElement("td");
    th.scope = "row";
    th.textContent = label;
    td.textContent = formatValue(key, caps[key]);
    row.append(th, td);
    return row;
  }));
  report.hidden = false;
  status.className = "ok";
  status.textContent = "WebGPU is ready.";
}

function showError(message) {
  status.className = "error";
  status.textContent = message;
}

try {
  await init();
  showReport(await capabilities());
} catch (error) {
  showError(error instanceof Error ? error.message : String(error));
}
