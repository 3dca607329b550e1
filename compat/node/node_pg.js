// node-postgres (`pg`) with pg-cursor and pg-copy-streams through pgward.
'use strict';
const { Client } = require('pg');
const Cursor = require('pg-cursor');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');
const { expect, run, exitCode, tls } = require('./checks');

const version = (p) => require(`${p}/package.json`).version;
console.log(`version pg ${version('pg')}, pg-cursor ${version('pg-cursor')}, pg-copy-streams ${version('pg-copy-streams')}`);

const connect = async () => {
  // pg reads PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE itself.
  const c = new Client({ ssl: tls() });
  await c.connect();
  return c;
};

async function main() {
  let client;
  const checks = {
    scram_tls: async () => {
      client = await connect();
      expect(client.connection.stream.encrypted === true, 'connection is not TLS');
      const r = await client.query('select current_user as u');
      expect(r.rows[0].u === process.env.PGUSER, 'current_user');
    },
    simple_query: async () => {
      const r = await client.query("select 1 + 1 as two, 'x' as x");
      expect(r.command === 'SELECT' && r.rowCount === 1, `${r.command} ${r.rowCount}`);
      expect(r.rows[0].two === 2 && r.rows[0].x === 'x', JSON.stringify(r.rows));
    },
    prepared_query: async () => {
      for (let i = 0; i < 8; i++) {
        const r = await client.query({ name: 'double', text: 'select $1::int * 2 as v', values: [i] });
        expect(r.rows[0].v === i * 2, JSON.stringify(r.rows));
      }
    },
    transaction_rollback: async () => {
      await client.query('begin');
      await client.query("insert into items (id, name) values (10, 'rolled back')");
      await client.query('rollback');
      const r = await client.query('select count(*)::int as n from items where id = 10');
      expect(r.rows[0].n === 0, 'insert survived');
    },
    error_in_transaction: async () => {
      await client.query('begin');
      await client.query("insert into items (id, name) values (11, 'doomed')");
      let err = await client.query('select 1 / $1::int', [0]).catch((e) => e);
      expect(err.code === '22012', `got ${err.code || 'no error'}`);
      err = await client.query('select 1').catch((e) => e);
      expect(err.code === '25P02', `got ${err.code || 'no error'}`);
      await client.query('rollback');
      const r = await client.query('select count(*)::int as n from items where id = 11');
      expect(r.rows[0].n === 0, 'committed');
    },
    copy_in: async () => {
      const rows = [100, 101, 102].map((i) => `${i}\tcopied ${i}\n`);
      const stream = client.query(copyFrom('copy items (id, name) from stdin'));
      await pipeline(Readable.from(rows), stream);
      expect(stream.rowCount === 3, `rowCount ${stream.rowCount}`);
    },
    copy_out: async () => {
      const chunks = [];
      const stream = client.query(copyTo('copy (select id, name from items where id >= 100 order by id) to stdout'));
      await pipeline(stream, new Writable({ write(c, _e, cb) { chunks.push(c); cb(); } }));
      const got = Buffer.concat(chunks).toString();
      expect(got === '100\tcopied 100\n101\tcopied 101\n102\tcopied 102\n', JSON.stringify(got));
    },
    cancel: async () => {
      const other = await connect();
      try {
        const t0 = Date.now();
        const pending = other.query('select pg_sleep(30)').catch((e) => e);
        await new Promise((r) => setTimeout(r, 500));
        // pg's cancel: a new connection sending CancelRequest with this key.
        const canceller = new Client({ ssl: tls() });
        canceller.cancel(other, other.activeQuery);
        const err = await pending;
        expect(err.code === '57014', `got ${err.code || 'no error'}`);
        expect(Date.now() - t0 < 10000, 'cancel took too long');
        const r = await other.query('select 7 as v');
        expect(r.rows[0].v === 7, 'connection unusable');
      } finally {
        await other.end();
      }
    },
    listen_notify: async () => {
      const listener = await connect();
      try {
        const got = new Promise((resolve, reject) => {
          listener.on('notification', resolve);
          setTimeout(() => reject(new Error('no notification within 5 s')), 5000);
        });
        await listener.query('listen compat_chan');
        await client.query("select pg_notify('compat_chan', 'hello from node-pg')");
        const n = await got;
        expect(n.channel === 'compat_chan' && n.payload === 'hello from node-pg', JSON.stringify(n));
      } finally {
        await listener.end();
      }
    },
    blocked_truncate_42501: async () => {
      const err = await client.query('truncate items').catch((e) => e);
      expect(err instanceof Error && err.code === '42501', `got ${err.code || 'no error'}`);
      expect(/pgward/.test(err.message), err.message);
      const r = await client.query('select count(*)::int as n from items');
      expect(r.rows[0].n > 0, 'items is empty');
    },
    soft_delete_rowcount: async () => {
      const r = await client.query('delete from items where id = $1', [50]);
      expect(r.command === 'DELETE' && r.rowCount === 1, `${r.command} ${r.rowCount}`);
      const s = await client.query('select deleted_at is not null as gone, deleted_by from items where id = 50');
      expect(s.rows.length === 1 && s.rows[0].gone && s.rows[0].deleted_by === process.env.PGUSER, JSON.stringify(s.rows));
    },
    rls_context: async () => {
      const user = process.env.PGUSER;
      const setting = "select current_setting('app.current_user_id') as v";
      expect((await client.query(setting)).rows[0].v === user, 'context setting not pinned');
      const r = await client.query('select owner, body from notes');
      expect(r.rows.length === 1 && r.rows[0].owner === user, `RLS let through ${JSON.stringify(r.rows)}`);
      const err = await client.query("set app.current_user_id = 'intruder'").catch((e) => e);
      expect(err.code === '42501', `spoofing: ${err.code || 'not blocked'}`);
      expect((await client.query(setting)).rows[0].v === user, 'context changed');
    },
    cursor: async () => {
      await client.query('begin');
      const cursor = client.query(new Cursor('select g from generate_series(1, 1000) g'));
      let total = 0;
      for (;;) {
        const rows = await cursor.read(100);
        if (rows.length === 0) break;
        total += rows.reduce((s, r) => s + r.g, 0);
      }
      await cursor.close();
      await client.query('commit');
      expect(total === 500500, `sum ${total}`);
    },
  };
  for (const [name, fn] of Object.entries(checks)) {
    if (!client && name !== 'scram_tls') {
      await run(name, async () => { throw new Error('no connection'); });
      continue;
    }
    await run(name, fn);
  }
  if (client) await client.end();
}

main().then(() => process.exit(exitCode()));
