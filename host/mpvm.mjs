// The real MicroPython interpreter (WebAssembly build, npm @micropython/micropython-webassembly-pyscript)
// driven over stdin/stdout by host/mpvm.py. One JSON request per line, one JSON reply per line.
//
// Ops: exec {code}            -> {ok, out} | {ok:false, out, type, error}
//      write {path, b64}      -> {ok}        (parents created)
//      read {path}            -> {ok, b64}   | {ok:false, error}
//      ls {path}              -> {ok, names}
//      rm {path}              -> {ok}
// At start-up the repository's firmware/ and sim/ trees (*.py only) are copied into /lib,
// which MicroPython has on sys.path, so firmware imports as `firmware.drivers.mlx90614`.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "fs";
import path from "path";
import readline from "readline";

const root = process.argv[2];
const heapsize = parseInt(process.argv[3] || "1048576", 10);
const trees = (process.argv[4] || "firmware,sim").split(",").filter(Boolean);

let out = [];
const mp = await loadMicroPython({
  heapsize,
  linebuffer: false,
  stdout: (b) => out.push(Buffer.from(b)),
  stderr: (b) => out.push(Buffer.from(b)),
});

function mkdirs(p) { mp.FS.mkdirTree(p); }
function copyTree(src, dst) {
  mkdirs(dst);
  for (const ent of fs.readdirSync(src, { withFileTypes: true })) {
    if (ent.name.startsWith(".") || ent.name === "__pycache__") continue;
    const s = path.join(src, ent.name), d = dst + "/" + ent.name;
    if (ent.isDirectory()) copyTree(s, d);
    else if (ent.name.endsWith(".py")) mp.FS.writeFile(d, fs.readFileSync(s));
  }
}
for (const t of trees) {
  const src = path.join(root, t);
  if (fs.existsSync(src)) copyTree(src, "/lib/" + t);
}

function reply(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  if (!line.trim()) continue;
  let req;
  try { req = JSON.parse(line); } catch (e) { reply({ ok: false, type: "ProtocolError", error: String(e) }); continue; }
  try {
    if (req.op === "exec") {
      out = [];
      try {
        mp.runPython(req.code);
        reply({ ok: true, out: Buffer.concat(out).toString("utf8") });
      } catch (e) {
        const text = Buffer.concat(out).toString("utf8");
        if (e.name === "PythonError") reply({ ok: false, out: text, type: e.type, error: e.message });
        else reply({ ok: false, out: text, type: "VMError", error: String(e && e.stack || e) });
      }
    } else if (req.op === "write") {
      mkdirs(path.posix.dirname(req.path));
      mp.FS.writeFile(req.path, Buffer.from(req.b64, "base64"));
      reply({ ok: true });
    } else if (req.op === "read") {
      reply({ ok: true, b64: Buffer.from(mp.FS.readFile(req.path)).toString("base64") });
    } else if (req.op === "ls") {
      reply({ ok: true, names: mp.FS.readdir(req.path).filter((n) => n !== "." && n !== "..") });
    } else if (req.op === "rm") {
      mp.FS.unlink(req.path);
      reply({ ok: true });
    } else {
      reply({ ok: false, type: "ProtocolError", error: "unknown op " + req.op });
    }
  } catch (e) {
    reply({ ok: false, type: "FSError", error: String(e && e.message || e) });
  }
}
