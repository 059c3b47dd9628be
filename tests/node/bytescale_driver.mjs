// Drives the published @bytescale/sdk, unmodified, against a server and
// prints what it returned or threw, as JSON, for tests/test_gateway_bytescale.py.
//
// stdin: {"apiUrl", "cdnUrl", "apiKey", "steps": [{"op", "params", "apiKey"?}, ...]}
//   op: getJob | cancelJob | listRecentJobs (JobApi), processFileAndSave (FileApi),
//       or "construct" (only build the client: the SDK's own key check).
//   A params value {"$result": i, "key": "jobId"} is the `key` of step i's value.
// stdout: {"sdkVersion", "results": [{"ok": true, "value"} | {"ok": false, "error": {...}}]}
import { readFileSync } from "node:fs";
import { BytescaleApiError, BytescaleGenericError, FileApi, JobApi } from "@bytescale/sdk";

// The package's "exports" hide package.json; read it where npm put it, beside this script.
const sdkVersion = JSON.parse(readFileSync(
  new URL("./node_modules/@bytescale/sdk/package.json", import.meta.url), "utf8")).version;

const plan = JSON.parse(readFileSync(0, "utf8"));
const results = [];

function resolve(value) {
  if (Array.isArray(value)) return value.map(resolve);
  if (value !== null && typeof value === "object") {
    if ("$result" in value) {
      const earlier = results[value.$result];
      if (!earlier || !earlier.ok) throw new Error(`step ${value.$result} has no value to refer to`);
      return earlier.value[value.key];
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolve(v)]));
  }
  return value;
}

function describe(e) {
  const error = { name: e.name, message: e.message };
  if (e instanceof BytescaleApiError) {
    error.errorCode = e.errorCode;
    error.details = e.details ?? null;
  } else if (e instanceof BytescaleGenericError) {
    error.status = e.response.status;
    error.responseText = e.responseText ?? null;
  }
  return error;
}

for (const step of plan.steps) {
  try {
    const config = { apiKey: step.apiKey ?? plan.apiKey, apiUrl: plan.apiUrl, cdnUrl: plan.cdnUrl };
    const jobs = new JobApi(config);
    const files = new FileApi(config);
    const params = resolve(step.params ?? {});
    let value;
    switch (step.op) {
      case "construct": value = null; break;
      case "getJob": value = await jobs.getJob(params); break;
      case "cancelJob": value = (await jobs.cancelJob(params)) ?? null; break;
      case "listRecentJobs": value = await jobs.listRecentJobs(params); break;
      case "processFileAndSave": value = await files.processFileAndSave(params); break;
      default: throw new Error(`unknown op ${step.op}`);
    }
    results.push({ ok: true, value });
  } catch (e) {
    results.push({ ok: false, error: describe(e) });
  }
}
process.stdout.write(JSON.stringify({ sdkVersion, results }) + "\n");
