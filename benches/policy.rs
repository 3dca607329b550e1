//! `evaluate` cost on an uncached and a cached statement.
//! Run: `cargo bench --bench policy` (figures in bench/README.md).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pgward::policy::{LexOptions, Policy, PolicyConfig, PreparedRegistry, SessionScope};

const PGBENCH_UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;";

const ORM_SELECT: &str = r#"SELECT "users"."id" AS "users_id",
       "users"."email" AS "users_email",
       "users"."name" AS "users_name",
       "users"."created_at" AS "users_created_at",
       "users"."updated_at" AS "users_updated_at",
       "orgs"."id" AS "orgs_id",
       "orgs"."name" AS "orgs_name",
       "orgs"."plan" AS "orgs_plan",
       count("orders"."id") AS "order_count",
       coalesce(sum("orders"."total"), 0) AS "order_total",
       max("orders"."created_at") AS "last_order_at"
FROM "users"
JOIN "memberships" ON "memberships"."user_id" = "users"."id"
JOIN "orgs" ON "orgs"."id" = "memberships"."org_id"
LEFT OUTER JOIN "orders" ON "orders"."user_id" = "users"."id"
     AND "orders"."status" IN ('paid', 'shipped', 'delivered')
     AND "orders"."created_at" >= $1
WHERE "users"."deleted_at" IS NULL
  AND "orgs"."id" = $2
  AND ("users"."email" ILIKE $3 OR "users"."name" ILIKE $3)
  AND EXISTS (
      SELECT 1 FROM "sessions"
      WHERE "sessions"."user_id" = "users"."id"
        AND "sessions"."expires_at" > now()
  )
GROUP BY "users"."id", "users"."email", "users"."name",
         "users"."created_at", "users"."updated_at",
         "orgs"."id", "orgs"."name", "orgs"."plan"
HAVING count("orders"."id") >= $4
ORDER BY "order_total" DESC, "users"."id" ASC
LIMIT $5 OFFSET $6"#;

fn scope() -> SessionScope {
    SessionScope {
        user: "app".into(),
        database: "prod".into(),
        application_name: "web".into(),
        client_addr: Some("10.0.0.7".parse().unwrap()),
        identity: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let cached = Policy::from_config(&PolicyConfig::default()).unwrap();
    let uncached_cfg = PolicyConfig {
        cache_entries: 0,
        ..PolicyConfig::default()
    };
    let uncached = Policy::from_config(&uncached_cfg).unwrap();
    let registry = PreparedRegistry::new();
    let scope = scope();
    for (name, sql) in [
        ("pgbench_update", PGBENCH_UPDATE),
        ("orm_select_40_lines", ORM_SELECT),
    ] {
        c.bench_function(&format!("evaluate/uncached/{name}"), |b| {
            b.iter(|| uncached.evaluate(black_box(sql), &scope, LexOptions::default(), &registry))
        });
        c.bench_function(&format!("evaluate/cached/{name}"), |b| {
            b.iter(|| cached.evaluate(black_box(sql), &scope, LexOptions::default(), &registry))
        });
    }
    // Simple protocol: pgbench -S inlines a new aid every time, so the
    // exact-text cache never hits; the template cache does.
    let mut aid = 0u64;
    c.bench_function("evaluate/inlined_literal/pgbench_select", |b| {
        b.iter(|| {
            aid = aid.wrapping_add(7919) % 10_000_000;
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            cached.evaluate(black_box(&sql), &scope, LexOptions::default(), &registry)
        })
    });
    c.bench_function("evaluate/uncached/pgbench_select", |b| {
        b.iter(|| {
            aid = aid.wrapping_add(7919) % 10_000_000;
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            uncached.evaluate(black_box(&sql), &scope, LexOptions::default(), &registry)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
