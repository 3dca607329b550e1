// The line protocol every compat program speaks: `<check> ok|FAIL: why`.
'use strict';
let failed = 0;

function expect(cond, what) {
  if (!cond) throw new Error(what);
}

async function run(name, fn) {
  try {
    await fn();
    console.log(`${name} ok`);
  } catch (e) {
    failed += 1;
    const msg = String((e && e.message) || e).replace(/\s+/g, ' ').slice(0, 300);
    console.log(`${name} FAIL: ${msg}`);
    console.error(e);
  }
}

function exitCode() {
  return failed ? 1 : 0;
}

const tls = () => ({
  ca: require('fs').readFileSync(process.env.PGSSLROOTCERT),
  servername: 'localhost',
});

module.exports = { expect, run, exitCode, tls };
