// A tiny MCP server over stdio for chatd's tests (tests/mcp.rs), written
// with Node's standard library only, that reports on its own process:
//   cwd  {}         -> {"cwd": <working directory>, "entries": [<names in it>]}
//   fail_long {bytes} -> isError: true with a text of `bytes` "x" characters
import { readdirSync } from "node:fs";
import { serveStdio } from "./stdio-server.mjs";

const tools = [
  { name: "cwd", description: "Shows the working directory and what is in it.", inputSchema: { type: "object", properties: {} } },
  {
    name: "fail_long",
    description: "Fails with a long error text.",
    inputSchema: { type: "object", properties: { bytes: { type: "integer" } }, required: ["bytes"] },
  },
];

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

serveStdio("probe", tools, call);
