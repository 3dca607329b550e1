// postgres.js (`postgres`) through pgward. It pipelines Parse/Bind/Describe/
// Execute and relies on Flush, which proxies that drop Flush break.
import postgres from 'postgres';
import { createRequire } from 'module';
import { pipeline } from 'stream/promises';
import { Readable, Writable } from 'stream';
const require = createRequire(import.meta.url);
const { expect, run, exitCode, tls } = require('./checks.js');

const fs = require('fs');
const pkg = JSON.parse(fs.readFileSync(new URL('./node_modules/postgres/package.json', import.meta.url)));
console.log(`version postgres ${pkg.version}`);
// postgres.js reads PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE itself.
const connect = (opts = {}) => postgres({ ssl: tls(), max: 1, onnotice: () => {}, ...opts });

let sql;
const checks = {
  scram_tls: async () => {
    sql = connect();
    const [r] = await sql`select current_user as u`;
    expect(r.u === process.env.PGUSER, 'current_user');
  },
  simple_query: async () => {
    const r = await sql.unsafe("select 1 + 1 as two, 'x' as x").simple();
    expect(r.command === 'SELECT' && r.count === 1, `${r.command} ${r.count}`);
    expect(r[0].two === 2 && r[0].x === 'x', JSON.stringify(r));
  },
  prepared_query: async () => {
    for (let i = 0; i < 8; i++) {
      const [r] = await sql`select ${i}::int * 2 as v`;
      expect(r.v === i * 2, JSON.stringify(r));
    }
    // Several queries in flight at once on one connection: pipelined.
    const many = await Promise.all([...Array(10).keys()].map((i) => sql`select ${i}::int + 1 as v`));
    expect(many.map(([r]) => r.v).join() === '1,2,3,4,5,6,7,8,9,10', 'pipelined results');
  },
  transaction_rollback: async () => {
    const err = await sql.begin(async (tx) => {
      await tx`insert into items (id, name) values (10, 'rolled back')`;
      throw new Error('roll back');
    }).catch((e) => e);
    expect(err.message === 'roll back', err.message);
    const [r] = await sql`select count(*)::int as n from items where id = 10`;
    expect(r.n === 0, 'insert survived');
  },
  error_in_transaction: async () => {
    let checked = false;
    const err = await sql.begin(async (tx) => {
      await tx`insert into items (id, name) values (11, 'doomed')`;
      const e1 = await tx`select 1 / ${0}::int`.catch((e) => e);
      expect(e1.code === '22012', `got ${e1.code || 'no error'}`);
      const e2 = await tx`select 1`.catch((e) => e);
      expect(e2.code === '25P02', `got ${e2.code || 'no error'}`);
      checked = true;
      throw e2;
    }).catch((e) => e);
    // postgres.js rejects begin() with the transaction's first error.
    expect(checked && err.code === '22012', `transaction ended with ${err.code || err.message}`);
    const [r] = await sql`select count(*)::int as n from items where id = 11`;
    expect(r.n === 0, 'committed');
  },
  copy_in: async () => {
    const stream = await sql`copy items (id, name) from stdin`.writable();
    await pipeline(Readable.from([100, 101, 102].map((i) => `${i}\tcopied ${i}\n`)), stream);
    const [r] = await sql`select count(*)::int as n from items where id >= 100`;
    expect(r.n === 3, `rows ${r.n}`);
  },
  copy_out: async () => {
    const chunks = [];
    const stream = await sql`copy (select id, name from items where id >= 100 order by id) to stdout`.readable();
    await pipeline(stream, new Writable({ write(c, _e, cb) { chunks.push(c); cb(); } }));
    const got = Buffer.concat(chunks).toString();
    expect(got === '100\tcopied 100\n101\tcopied 101\n102\tcopied 102\n', JSON.stringify(got));
  },
  cancel: async () => {
    const other = connect();
    try {
      const t0 = Date.now();
      const q = other`select pg_sleep(30)`;
      const pending = q.catch((e) => e);
      await new Promise((r) => setTimeout(r, 500));
      q.cancel();
      const err = await pending;
      expect(err.code === '57014', `got ${err.code || 'no error'}`);
      expect(Date.now() - t0 < 10000, 'cancel took too long');
      const [r] = await other`select 7 as v`;
      expect(r.v === 7, 'connection unusable');
    } finally {
      await other.end();
    }
  },
  listen_notify: async () => {
    const listener = connect();
    try {
      let resolve;
      const got = new Promise((r) => { resolve = r; });
      await listener.listen('compat_chan', (payload) => resolve(payload));
      await sql`select pg_notify('compat_chan', 'hello from postgres.js')`;
      const timeout = new Promise((_r, reject) => setTimeout(() => reject(new Error('no notification within 5 s')), 5000));
      const payload = await Promise.race([got, timeout]);
      expect(payload === 'hello from postgres.js', payload);
    } finally {
      await listener.end();
    }
  },
  blocked_truncate_42501: async () => {
    const err = await sql`truncate items`.catch((e) => e);
    expect(err instanceof postgres.PostgresError && err.code === '42501', `got ${err.code || 'no error'}`);
    expect(/pgward/.test(err.message), err.message);
    const [r] = await sql`select count(*)::int as n from items`;
    expect(r.n > 0, 'items is empty');
  },
  soft_delete_rowcount: async () => {
    const r = await sql`delete from items where id = ${50}`;
    expect(r.command === 'DELETE' && r.count === 1, `${r.command} ${r.count}`);
    const s = await sql`select deleted_at is not null as gone, deleted_by from items where id = 50`;
    expect(s.length === 1 && s[0].gone && s[0].deleted_by === process.env.PGUSER, JSON.stringify(s));
  },
  rls_context: async () => {
    const user = process.env.PGUSER;
    const [s] = await sql`select current_setting('app.current_user_id') as v`;
    expect(s.v === user, 'context setting not pinned');
    const rows = await sql`select owner, body from notes`;
    expect(rows.length === 1 && rows[0].owner === user, `RLS let through ${JSON.stringify(rows)}`);
    const err = await sql.unsafe("set app.current_user_id = 'intruder'").catch((e) => e);
    expect(err.code === '42501', `spoofing: ${err.code || 'not blocked'}`);
    const [t] = await sql`select current_setting('app.current_user_id') as v`;
    expect(t.v === user, 'context changed');
  },
  cursor: async () => {
    let total = 0;
    await sql.begin(async (tx) => {
      for await (const rows of tx`select g from generate_series(1, 1000) g`.cursor(100)) {
        total += rows.reduce((s, r) => s + r.g, 0);
      }
    });
    expect(total === 500500, `sum ${total}`);
  },
};

for (const [name, fn] of Object.entries(checks)) {
  if (!sql && name !== 'scram_tls') {
    await run(name, async () => { throw new Error('no connection'); });
    continue;
  }
  await run(name, fn);
}
if (sql) await sql.end();
process.exit(exitCode());
