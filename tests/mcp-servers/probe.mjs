// A tiny MCP server over stdio for chatd's tests (tests/mcp.rs), written
// with Node's standard library only, that reports on its own process:
//   cwd  {}         -> {"cwd": <working directory>, "entries": [<names in it>]}
//   fail_long {bytes} -> isError: true with a text of `bytes` "x" characters
import { readdirSync } from "node:fs";
import { createInterface } from "node:readline";

const tools = [
  { name: "cwd", description: "Shows the working directory and what is in it.", inputSchema: { type: "object", properties: {} } },
  {
    name: "fail_long",
    description: "Fails with a long error text.",
    inputSchema: { type: "object", properties: { bytes: { type: "integer" } }, required: ["bytes"] },
  },
];

function send(message) {
  process.stdout.write(JSON.stringify({ jsonrpc: "2.0", ...message }) + "\n");
}

function call(name, args) {
  switch (name) {
    case "cwd": {
      const cwd = process.cwd();
      const text = JSON.stringify({ cwd, entries: readdirSync(cwd) });
      return { content: [{ type: "text", text }] };
    }
    case "fail_long":
      return { content: [{ type: "text", text: "x".repeat(args.bytes) }], isError: true };
    default:
      return null;
  }
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    send({ id: null, error: { code: -32700, message: "parse error" } });
    return;
  }
  if (msg.id === undefined) return; // a notification
  switch (msg.method) {
    case "initialize":
      send({
        id: msg.id,
        result: {
          protocolVersion: "2025-06-18",
          capabilities: { tools: {} },
          serverInfo: { name: "probe", version: "1.0.0" },
        },
      });
      break;
    case "ping":
      send({ id: msg.id, result: {} });
      break;
    case "tools/list":
      send({ id: msg.id, result: { tools } });
      break;
    case "tools/call": {
      const result = call(msg.params?.name, msg.params?.arguments ?? {});
      if (result) send({ id: msg.id, result });
      else send({ id: msg.id, error: { code: -32602, message: `unknown tool ${msg.params?.name}` } });
      break;
    }
    default:
      send({ id: msg.id, error: { code: -32601, message: `method not found: ${msg.method}` } });
  }
});
lines.on("close", () => process.exit(0));
