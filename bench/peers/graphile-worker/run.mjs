// graphile-worker peer of `orgkeeper bench provision`: no-op jobs added by
// N connections (one job per transaction, as applications add them) while
// one worker with default concurrency runs them; prints jobs/s from the
// first add to the last job done, on a fresh database.
import pg from "pg";
import { Logger, run, runMigrations } from "graphile-worker";

const adminUrl = process.env.BENCH_DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";
const jobs = Number(process.env.JOBS || 20000);
const clients = Number(process.env.CLIENTS || 8);
const name = `gw_peer_${Math.random().toString(16).slice(2, 10)}`;

const admin = new pg.Client({ connectionString: adminUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const url = new URL(adminUrl);
url.pathname = `/${name}`;
const connectionString = url.toString();
// Warnings and errors only: logging every job would time the console.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(message);
});
try {
  await runMigrations({ connectionString, logger });
  // The worker's pool is ours, so it is closed before the database is dropped.
  const workerPool = new pg.Pool({ connectionString, max: 10 });
  const report = (e) => console.error(`worker pool: ${e.message}`);
  workerPool.on("error", report);
  workerPool.on("connect", (client) => client.on("error", report));
  const runner = await run({
    pgPool: workerPool,
    noHandleSignals: true,
    taskList: { noop: async () => {} },
    logger,
  });
  const pool = new pg.Pool({ connectionString, max: clients });
  let next = 0;
  const started = process.hrtime.bigint();
  const adders = Array.from({ length: clients }, async () => {
    const client = await pool.connect();
    try {
      while (next < jobs) {
        next++;
        await client.query("SELECT graphile_worker.add_job('noop', '{}'::json)");
      }
    } finally {
      client.release();
    }
  });
  await Promise.all(adders);
  const added = Number(process.hrtime.bigint() - started) / 1e9;
  for (;;) {
    const { rows } = await pool.query("SELECT count(*)::int AS n FROM graphile_worker.jobs");
    if (rows[0].n === 0) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const total = Number(process.hrtime.bigint() - started) / 1e9;
  await runner.stop();
  await runner.promise;
  await workerPool.end();
  await pool.end();
  console.log(
    JSON.stringify({
      peer: "graphile-worker",
      jobs,
      clients,
      adds_per_s: Math.round((jobs / added) * 10) / 10,
      jobs_per_s: Math.round((jobs / total) * 10) / 10,
    }),
  );
} finally {
  await admin.query(`DROP DATABASE IF EXISTS ${name}`);
  await admin.end();
}
