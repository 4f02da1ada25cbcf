// A tiny MCP server over stdio for chatd's tests (tests/mcp.rs), written
// with Node's standard library only. It speaks newline-delimited JSON-RPC:
// initialize, ping, tools/list and tools/call for four tools:
//   echo  {text}  -> "pid <pid>: <text>" (the pid shows which process answered)
//   fail  {}      -> isError: true
//   mixed {}      -> a text, an image and an embedded text resource
//   env   {}      -> a few of its environment variables, as JSON
//   crash {}      -> the process exits with status 3 without answering
import { serveStdio } from "./stdio-server.mjs";

const tools = [
  {
    name: "echo",
    description: "Echoes the text, prefixed with the server's pid.",
    inputSchema: { type: "object", properties: { text: { type: "string" } }, required: ["text"] },
  },
  { name: "fail", description: "Always fails.", inputSchema: { type: "object", properties: {} } },
  { name: "mixed", description: "Returns several kinds of content.", inputSchema: { type: "object", properties: {} } },
  { name: "env", description: "Shows some environment variables.", inputSchema: { type: "object", properties: {} } },
  { name: "crash", description: "Exits the server process.", inputSchema: { type: "object", properties: {} } },
];

function call(name, args) {
  switch (name) {
    case "echo":
      return { content: [{ type: "text", text: `pid ${process.pid}: ${args.text}` }] };
    case "fail":
      return { content: [{ type: "text", text: "it failed on purpose" }], isError: true };
    case "mixed":
      return {
        content: [
          { type: "text", text: "three parts" },
          { type: "image", data: Buffer.from("12345").toString("base64"), mimeType: "image/png" },
          { type: "resource", resource: { uri: "file:///notes.txt", mimeType: "text/plain", text: "embedded text" } },
        ],
      };
    case "env": {
      const env = {
        has_path: Boolean(process.env.PATH),
        CARGO_PKG_NAME: process.env.CARGO_PKG_NAME ?? null,
        MCP_GREETING: process.env.MCP_GREETING ?? null,
      };
      return { content: [{ type: "text", text: JSON.stringify(env) }] };
    }
    case "crash":
      process.stderr.write("crashy: crashing on request\n");
      process.exit(3);
    default:
      return null;
  }
}

serveStdio("crashy", tools, call);
process.stderr.write(`crashy: started, pid ${process.pid}\n`);
