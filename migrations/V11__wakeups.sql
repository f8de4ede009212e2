-- V11: wake-ups the daemon cannot miss.
--
-- A daemon with free slots and nothing to claim records that it is waiting
-- (one row per replica, valid for a few poll intervals). The outbox's insert
-- trigger (sql/outbox.sql) takes a shared advisory lock until its
-- transaction ends and sends NOTIFY only while some daemon is waiting; a
-- daemon that starts waiting first records it, then waits until no
-- inserting transaction holds that lock, then claims once more. So every
-- committed action is either seen by that last claim or notified: none waits
-- for the poll while a daemon is idle. Busy queues send no NOTIFY (a
-- notifying commit serialises on a cluster-wide lock).

CREATE UNLOGGED TABLE orgkeeper.daemon_waiting (
    worker text        PRIMARY KEY,
    until  timestamptz NOT NULL
);
COMMENT ON TABLE orgkeeper.daemon_waiting IS
  'Daemon replicas waiting for work (free slots, nothing due), each until a time a few poll intervals ahead (refreshed on every poll). The outbox insert trigger NOTIFYs only while a row is current. Unlogged: it describes running processes, not data.';
