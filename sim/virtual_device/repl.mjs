// The virtual device's interpreter: MicroPython (WebAssembly, npm
// @micropython/micropython-webassembly-pyscript) speaking MicroPython's serial protocol on
// stdin/stdout as raw bytes, like the UART of an ESP32. sim/virtual_device/serial_bridge.py puts a pseudo-terminal in
// front of it; nothing here knows about ptys.
//
//   node sim/virtual_device/repl.mjs '{"repo": "...", "flash": "DIR", "faults": [], "scenario": null, "seed": 1}'
//
// Serial protocol (what mpremote and pyboard.py use):
//   friendly REPL   MicroPython's own event-driven REPL (line editing, Ctrl-E paste mode, Ctrl-B
//                   banner, Ctrl-C clears the line, Ctrl-D on an empty line = soft reboot)
//   Ctrl-A          raw REPL, implemented here: code up to Ctrl-D, answered with
//                   "OK" <stdout> \x04 <traceback> \x04 ">"; Ctrl-D on an empty buffer = soft
//                   reboot ("OK\r\nMPY: soft reboot\r\n", then "raw REPL; CTRL-B to exit\r\n>");
//                   Ctrl-B back to the friendly REPL; Ctrl-C clears the buffer.
//   \x05A\x01       raw-paste mode (answered "R\x01", a 2-byte window, "\x01" per window consumed,
//                   "\x04" when the Ctrl-D ending the code is read). The wasm port's own event-driven
//                   raw REPL blocks forever on this sequence, hence the raw REPL here.
//   Ctrl-C          while code runs: a KeyboardInterrupt at the next `vdev.poll()` call, which the
//                   simulated board's clock makes on every sleep, and time.sleep/sleep_ms/sleep_us
//                   every 20 ms (sim/virtual_device/vm_boot.py). Pure Python loops that never sleep
//                   cannot be interrupted.
// Output is "cooked" as on the ESP32 (a lone \n becomes \r\n).
//
// Soft reboot = a fresh interpreter (a new WebAssembly instance: empty heap, modules, globals),
// then the boot step: firmware/ and sim/ (*.py, read once at start: the "frozen" image) in
// /lib, the flash folder copied to /.flashfs, sim.hardware.vm_boot.boot() (that folder mounted at
// /flash with the ESP32's errno numbers, SimBoard on /flash made current, cwd /flash), then
// /flash/boot.py and, in the friendly REPL only, /flash/main.py.
//
// Flash persistence is write-through at command granularity: after every command (a raw-REPL
// exec, a friendly-REPL line, boot) and before its answer is sent, files that changed under
// /flash are written to the host folder (tmp file + rename) and deleted files removed, so once
// a host tool has the answer, the host folder holds the result. SIGTERM/SIGINT/stdin EOF: sync
// once more and exit 0 (a command still running after 2 s is abandoned, like a power cut).
//
// The interpreter runs in a worker thread so that the main thread keeps reading stdin (and sees
// Ctrl-C) while Python runs; bytes travel through a SharedArrayBuffer ring.
import { Worker, isMainThread, workerData } from "worker_threads";
import fs from "fs";
import path from "path";

const RING = 1 << 20;
const W = 0, R = 1, INTR = 2, TERM = 3;   // ctl slots: write pos, read pos, Ctrl-C count, terminate

if (isMainThread) {
  const cfg = JSON.parse(process.argv[2] || "{}");
  const sab = new SharedArrayBuffer(16 + RING);
  const ctl = new Int32Array(sab, 0, 4);
  const data = new Uint8Array(sab, 16, RING);
  const worker = new Worker(new URL(import.meta.url), { workerData: { cfg, sab } });
  process.stdin.on("data", (chunk) => {
    let w = Atomics.load(ctl, W);
    const r = Atomics.load(ctl, R);
    for (const b of chunk) {
      const nw = (w + 1) % RING;
      if (nw === r) { process.stderr.write("vdev: input overflow, byte dropped\n"); continue; }
      data[w] = b;
      w = nw;
      if (b === 3) Atomics.add(ctl, INTR, 1);
    }
    Atomics.store(ctl, W, w);
    Atomics.notify(ctl, W);
  });
  let stopping = false;
  const shutdown = () => {
    if (stopping) return;
    stopping = true;
    Atomics.store(ctl, TERM, 1);
    Atomics.notify(ctl, W);
    setTimeout(() => process.exit(0), 2000);
  };
  process.stdin.on("end", shutdown);
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
  worker.on("exit", (code) => process.exit(code));
  worker.on("error", (e) => { process.stderr.write("vdev: " + (e && e.stack || e) + "\n"); process.exit(1); });
} else {
  await runDevice(workerData.cfg, workerData.sab);
}

async function runDevice(cfg, sab) {
  const { loadMicroPython } = await import("@micropython/micropython-webassembly-pyscript");
  const ctl = new Int32Array(sab, 0, 4);
  const data = new Uint8Array(sab, 16, RING);
  const repo = cfg.repo;
  const flashHost = path.resolve(cfg.flash);
  const heapsize = cfg.heapsize || 1048576;
  const PASTE_WINDOW = 512;
  const STORE = "/.flashfs";     // the flash's files in the interpreter's filesystem, mounted at /flash
  fs.mkdirSync(flashHost, { recursive: true });

  // --- the frozen image: read once -----------------------------------------------------------
  const frozen = [];
  const freeze = (src, dst) => {
    for (const ent of fs.readdirSync(src, { withFileTypes: true })) {
      if (ent.name.startsWith(".") || ent.name === "__pycache__") continue;
      const s = path.join(src, ent.name), d = dst + "/" + ent.name;
      if (ent.isDirectory()) freeze(s, d);
      else if (ent.name.endsWith(".py")) frozen.push([d, fs.readFileSync(s)]);
    }
  };
  for (const t of ["firmware", "sim"]) freeze(path.join(repo, t), "/lib/" + t);
  const scenario = cfg.scenario ? fs.readFileSync(cfg.scenario) : null;

  // --- output ---------------------------------------------------------------------------------
  let outq = [];
  let prev = 0;
  const put = (c) => {
    if (c === 10 && prev !== 13) outq.push(13);
    outq.push(c);
    prev = c;
  };
  const emit = (s) => { for (const c of Buffer.from(s, "latin1")) put(c); };
  const pause = new Int32Array(new SharedArrayBuffer(4));
  const flush = () => {
    if (!outq.length) return;
    const buf = Buffer.from(outq);
    outq = [];
    let off = 0;
    while (off < buf.length) {
      try {
        off += fs.writeSync(1, buf, off, buf.length - off);
      } catch (e) {
        if (e.code !== "EAGAIN") throw e;
        Atomics.wait(pause, 0, 0, 2);
      }
    }
  };

  // --- input ----------------------------------------------------------------------------------
  const readByte = () => {
    const r = Atomics.load(ctl, R);
    if (r === Atomics.load(ctl, W)) return -1;
    const b = data[r];
    Atomics.store(ctl, R, (r + 1) % RING);
    if (b === 3) Atomics.sub(ctl, INTR, 1);
    return b;
  };

  // --- flash: host folder <-> /flash ------------------------------------------------------------
  let mp = null;
  let snapshot = new Map();       // relative path -> Buffer, as last written to the host
  let snapDirs = new Set();
  const hostWalk = (dir, rel, files, dirs) => {
    for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
      const r = rel ? rel + "/" + ent.name : ent.name;
      if (ent.isDirectory()) { dirs.add(r); hostWalk(path.join(dir, ent.name), r, files, dirs); }
      else if (ent.isFile()) files.set(r, fs.readFileSync(path.join(dir, ent.name)));
    }
  };
  const vmWalk = (dir, rel, files, dirs) => {
    for (const name of mp.FS.readdir(dir)) {
      if (name === "." || name === "..") continue;
      const p = dir + "/" + name, r = rel ? rel + "/" + name : name;
      const st = mp.FS.stat(p);
      if (mp.FS.isDir(st.mode)) { dirs.add(r); vmWalk(p, r, files, dirs); }
      else files.set(r, Buffer.from(mp.FS.readFile(p)));
    }
  };
  const loadFlash = () => {
    const files = new Map(), dirs = new Set();
    hostWalk(flashHost, "", files, dirs);
    mp.FS.mkdirTree(STORE);
    for (const d of [...dirs].sort()) mp.FS.mkdirTree(STORE + "/" + d);
    for (const [r, buf] of files) mp.FS.writeFile(STORE + "/" + r, buf);
    snapshot = files;
    snapDirs = dirs;
  };
  const syncFlash = () => {
    if (!mp) return;
    const files = new Map(), dirs = new Set();
    try { vmWalk(STORE, "", files, dirs); } catch (e) { return; }   // /flash removed: keep the host copy
    for (const d of [...dirs].sort()) if (!snapDirs.has(d)) fs.mkdirSync(path.join(flashHost, d), { recursive: true });
    for (const [r, buf] of files) {
      const old = snapshot.get(r);
      if (old && old.equals(buf)) continue;
      const dst = path.join(flashHost, r), tmp = dst + ".vdev-tmp";
      fs.mkdirSync(path.dirname(dst), { recursive: true });
      fs.writeFileSync(tmp, buf);
      fs.renameSync(tmp, dst);
    }
    for (const r of snapshot.keys()) if (!files.has(r)) fs.rmSync(path.join(flashHost, r), { force: true });
    for (const d of [...snapDirs].sort().reverse()) {
      if (!dirs.has(d)) { try { fs.rmdirSync(path.join(flashHost, d)); } catch (e) { /* not empty on the host */ } }
    }
    snapshot = files;
    snapDirs = dirs;
  };

  // --- the interpreter --------------------------------------------------------------------------
  let mode = "friendly";          // "friendly" | "raw" | "paste"
  let dirty = false;
  let lastFlush = 0;
  const terminate = () => {
    try { syncFlash(); } finally { flush(); process.exit(0); }
  };
  // reference instruments: a JSON file the host rewrites (nabd sim instrument); checked at most
  // every 100 ms of real time, handed to Python by poll() when it changed
  let instMtime = -1, instChecked = 0;
  const readInstruments = () => {
    if (!cfg.instruments) return null;
    let st;
    try { st = fs.statSync(cfg.instruments); } catch (e) { return null; }
    if (st.mtimeMs === instMtime) return null;
    instMtime = st.mtimeMs;
    try { return JSON.stringify(JSON.parse(fs.readFileSync(cfg.instruments, "utf8"))); } catch (e) { return null; }
  };
  const poll = () => {
    const now = performance.now();
    let inst = null;
    if (now - instChecked > 100) { instChecked = now; inst = readInstruments(); }
    if (now - lastFlush > 50) { flush(); lastFlush = now; }
    if (Atomics.load(ctl, TERM)) terminate();
    if (Atomics.load(ctl, INTR) > 0) {
      for (let b = readByte(); b !== -1 && b !== 3; b = readByte()) { /* dropped, like a UART buffer reset */ }
      mp._module.ccall("mp_sched_keyboard_interrupt", "null", [], []);
    }
    return inst;
  };
  const run = (code) => {   // -> traceback text ("" when fine)
    dirty = true;
    try {
      mp.runPython(code);
      return "";
    } catch (e) {
      if (e && e.name === "PythonError") return e.type === "SystemExit" ? "" : e.message;
      return "VMError: " + String(e && e.stack || e) + "\n";
    }
  };
  const boot = async () => {
    mp = await loadMicroPython({
      heapsize, linebuffer: false,
      stdout: (b) => { for (const c of b) put(c); },
      stderr: (b) => { for (const c of b) put(c); },
    });
    mp.registerJsModule("vdev", { poll });
    for (const [d, buf] of frozen) {
      mp.FS.mkdirTree(path.posix.dirname(d));
      mp.FS.writeFile(d, buf);
    }
    loadFlash();
    if (scenario) mp.FS.writeFile("/scenario.bin", scenario);
    const args = [
      "faults=" + JSON.stringify(cfg.faults || []),
      "scenario_path=" + (scenario ? "'/scenario.bin'" : "None"),
      "seed=" + (cfg.seed | 0),
      "unit_errors=" + (cfg.unit_errors ? "True" : "False"),
      "unix_time=" + Math.floor(Date.now() / 1000),
      "store='" + STORE + "'",
      "instruments=" + (() => { instMtime = -1; const j = readInstruments(); return j ? "__import__('json').loads(" + JSON.stringify(j) + ")" : "None"; })(),
    ].join(", ");
    emit(run("import sim.virtual_device.vm_boot as _vd\n_vd.boot(" + args + ")\ndel _vd\n"));
    for (const f of mode === "friendly" ? ["boot.py", "main.py"] : ["boot.py"]) {
      let exists = true;
      try { mp.FS.stat(STORE + "/" + f); } catch (e) { exists = false; }
      if (exists) emit(run("exec(open('/flash/" + f + "').read())\n"));
    }
  };
  const softReboot = async () => {
    syncFlash();
    emit("MPY: soft reboot\r\n");
    await boot();
    const n = outq.length;
    mp.replInit();                // the friendly REPL's state exists in raw mode too (Ctrl-B)
    if (mode !== "friendly") { outq.length = n; emit("raw REPL; CTRL-B to exit\r\n>"); }
  };
  const enterRaw = () => { mode = "raw"; raw = []; emit("\r\nraw REPL; CTRL-B to exit\r\n>"); };

  let raw = [];                   // the raw REPL's code buffer
  let pre = [];                   // a possible raw-paste request \x05 A \x01 being read
  let paste = [], pasteRemain = 0;
  const execRaw = (code) => {
    const err = run(code);
    emit("\x04" + err + "\x04>");
  };
  const rawByte = async (b) => {
    if (pre.length || (b === 5 && raw.length === 0)) {
      pre.push(b);
      const want = [5, 65, 1];
      if (pre.every((x, i) => x === want[i])) {
        if (pre.length === 3) {
          pre = [];
          mode = "paste";
          paste = [];
          pasteRemain = PASTE_WINDOW;
          emit("R\x01" + String.fromCharCode(PASTE_WINDOW & 0xff, PASTE_WINDOW >> 8));
        }
        return;
      }
      const pending = pre;
      pre = [];
      raw.push(pending.shift());
      for (const x of pending) await rawByte(x);
      return;
    }
    if (b === 1) { raw = []; emit("\r\nraw REPL; CTRL-B to exit\r\n>"); }
    else if (b === 2) { mode = "friendly"; raw = []; mp.replProcessChar(2); }
    else if (b === 3) raw = [];
    else if (b === 4) {
      emit("OK");
      if (raw.length === 0) { emit("\r\n"); await softReboot(); return; }
      const code = Buffer.from(raw).toString("utf8");
      raw = [];
      execRaw(code);
    } else raw.push(b);
  };
  const pasteByte = (b) => {
    if (b === 4 || b === 3) {
      emit("\x04");
      mode = "raw";
      const code = Buffer.from(paste).toString("utf8");
      paste = [];
      if (b === 3) emit("\x04Traceback (most recent call last):\nKeyboardInterrupt: \n\x04>");
      else { flush(); execRaw(code); }
      return;
    }
    paste.push(b);
    if (--pasteRemain === 0) { emit("\x01"); pasteRemain = PASTE_WINDOW; }
  };
  const handle = async (b) => {
    if (mode === "paste") return pasteByte(b);
    if (mode === "raw") return rawByte(b);
    if (b === 1) return enterRaw();
    dirty = true;
    const ret = mp.replProcessChar(b);
    if (ret & 0x100) await softReboot();   // PYEXEC_FORCED_EXIT: Ctrl-D on an empty line
  };

  await boot();
  mp.replInit();
  syncFlash();
  flush();
  for (;;) {
    if (Atomics.load(ctl, TERM)) terminate();
    const b = readByte();
    if (b === -1) {
      if (dirty) { syncFlash(); dirty = false; }
      flush();
      Atomics.wait(ctl, W, Atomics.load(ctl, R), 1000);
      continue;
    }
    await handle(b);
  }
}
