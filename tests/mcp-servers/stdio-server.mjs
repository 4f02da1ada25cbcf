// The newline-delimited JSON-RPC loop the test MCP servers (crashy.mjs,
// probe.mjs) share, with Node's standard library only: initialize, ping,
// tools/list, and tools/call answered by the server's `call(name, args)`,
// which returns an MCP tool result or null for an unknown tool.
import { createInterface } from "node:readline";

function send(message) {
  process.stdout.write(JSON.stringify({ jsonrpc: "2.0", ...message }) + "\n");
}

// Serves `tools` as the MCP server `name` on stdin/stdout until stdin
// closes, then exits 0.
export function serveStdio(name, tools, call) {
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
            serverInfo: { name, version: "1.0.0" },
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
}
