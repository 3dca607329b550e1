// pgJDBC through pgward (run with `java -cp postgresql.jar Compat.java`).
// Prints `<check> ok|FAIL: why` lines like every compat program.
import java.io.StringReader;
import java.io.StringWriter;
import java.sql.*;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.largeobject.LargeObject;
import org.postgresql.largeobject.LargeObjectManager;
import org.postgresql.util.PSQLException;

public class Compat {
    interface Check { void run() throws Exception; }

    static int failed = 0;
    static Connection conn;

    static void expect(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static void check(String name, Check c) {
        if (conn == null && !name.equals("scram_tls")) {
            report(name, "no connection");
            return;
        }
        try {
            c.run();
            System.out.println(name + " ok");
        } catch (Throwable e) {
            e.printStackTrace();
            report(name, String.valueOf(e));
        }
    }

    static void report(String name, String why) {
        failed++;
        String msg = why.replaceAll("\\s+", " ");
        System.out.println(name + " FAIL: " + msg.substring(0, Math.min(300, msg.length())));
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
                + "/" + System.getenv("PGDATABASE");
        Properties p = new Properties();
        p.setProperty("user", System.getenv("PGUSER"));
        p.setProperty("password", System.getenv("PGPASSWORD"));
        p.setProperty("sslmode", "verify-full");
        p.setProperty("sslrootcert", System.getenv("PGSSLROOTCERT"));
        return DriverManager.getConnection(url, p);
    }

    static long scalar(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    static String sqlState(Check c) throws Exception {
        try {
            c.run();
        } catch (SQLException e) {
            return e.getSQLState();
        }
        return "no error";
    }

    /** SQLSTATE of a [insert, bad, insert] batch and which of its rows survived. */
    static String batchOutcome(String bad, int firstId) throws Exception {
        String state = "none ";
        try (Statement s = conn.createStatement()) {
            s.addBatch("insert into items (id, name) values (" + firstId + ", 'before')");
            s.addBatch(bad);
            s.addBatch("insert into items (id, name) values (" + (firstId + 1) + ", 'after')");
            s.executeBatch();
        } catch (BatchUpdateException e) {
            SQLException cause = e.getNextException() != null ? e.getNextException() : e;
            state = cause.getSQLState() + " ";
        }
        try (Statement s = conn.createStatement();
             ResultSet rs = s.executeQuery("select coalesce(string_agg((id - " + firstId + ")::text, ',' order by id), '')"
                     + " from items where id in (" + firstId + ", " + (firstId + 1) + ")")) {
            rs.next();
            return state + "kept[" + rs.getString(1) + "]";
        }
    }

    public static void main(String[] args) throws Exception {
        System.out.println("version pgJDBC " + org.postgresql.Driver.getVersion().replace("PostgreSQL JDBC Driver ", ""));

        check("scram_tls", () -> {
            conn = connect();
            try (Statement s = conn.createStatement();
                 ResultSet rs = s.executeQuery("select current_user")) {
                rs.next();
                expect(rs.getString(1).equals(System.getenv("PGUSER")), "current_user");
            }
        });

        check("simple_query", () -> {
            try (Statement s = conn.createStatement();
                 ResultSet rs = s.executeQuery("select 1 + 1, 'x'")) {
                expect(rs.next() && rs.getInt(1) == 2 && rs.getString(2).equals("x"), "wrong row");
            }
        });

        check("prepared_query", () -> {
            // Past prepareThreshold (5) pgJDBC switches to a named server-side statement.
            try (PreparedStatement ps = conn.prepareStatement("select ?::int * 2")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next() && rs.getInt(1) == i * 2, "wrong value at " + i);
                    }
                }
                expect(ps.unwrap(PGStatement.class).isUseServerPrepare(), "never used a server-side prepared statement");
            }
        });

        check("transaction_rollback", () -> {
            conn.setAutoCommit(false);
            try (Statement s = conn.createStatement()) {
                s.executeUpdate("insert into items (id, name) values (10, 'rolled back')");
            }
            conn.rollback();
            conn.setAutoCommit(true);
            expect(scalar(conn, "select count(*) from items where id = 10") == 0, "insert survived");
        });

        check("error_in_transaction", () -> {
            conn.setAutoCommit(false);
            try (Statement s = conn.createStatement()) {
                s.executeUpdate("insert into items (id, name) values (11, 'doomed')");
                String st = sqlState(() -> s.executeQuery("select 1 / 0"));
                expect(st.equals("22012"), "got " + st);
                st = sqlState(() -> s.executeQuery("select 1"));
                expect(st.equals("25P02"), "got " + st);
            }
            conn.rollback();
            conn.setAutoCommit(true);
            expect(scalar(conn, "select count(*) from items where id = 11") == 0, "committed");
        });

        CopyManager copy = conn == null ? null : conn.unwrap(PGConnection.class).getCopyAPI();
        check("copy_in", () -> {
            long n = copy.copyIn("copy items (id, name) from stdin",
                    new StringReader("100\tcopied 100\n101\tcopied 101\n102\tcopied 102\n"));
            expect(n == 3, "copied " + n);
        });

        check("copy_out", () -> {
            StringWriter w = new StringWriter();
            long n = copy.copyOut("copy (select id, name from items where id >= 100 order by id) to stdout", w);
            expect(n == 3 && w.toString().equals("100\tcopied 100\n101\tcopied 101\n102\tcopied 102\n"), w.toString());
        });

        check("cancel", () -> {
            try (Connection other = connect(); Statement s = other.createStatement()) {
                Thread t = new Thread(() -> {
                    try {
                        Thread.sleep(500);
                        s.cancel();
                    } catch (Exception e) {
                        e.printStackTrace();
                    }
                });
                long t0 = System.nanoTime();
                t.start();
                String st = sqlState(() -> s.executeQuery("select pg_sleep(30)"));
                t.join();
                expect(st.equals("57014"), "got " + st);
                expect(System.nanoTime() - t0 < 10_000_000_000L, "cancel took too long");
                expect(scalar(other, "select 7") == 7, "connection unusable");
            }
        });

        check("listen_notify", () -> {
            try (Connection listener = connect()) {
                try (Statement s = listener.createStatement()) {
                    s.execute("listen compat_chan");
                }
                try (Statement s = conn.createStatement()) {
                    s.execute("notify compat_chan, 'hello from pgjdbc'");
                }
                PGNotification[] got = listener.unwrap(PGConnection.class).getNotifications(5000);
                expect(got != null && got.length == 1, "no notification within 5 s");
                expect(got[0].getName().equals("compat_chan") && got[0].getParameter().equals("hello from pgjdbc"),
                        got[0].getName() + " " + got[0].getParameter());
            }
        });

        check("blocked_truncate_42501", () -> {
            try (Statement s = conn.createStatement()) {
                s.executeUpdate("truncate items");
                throw new AssertionError("TRUNCATE was not blocked");
            } catch (PSQLException e) {
                expect("42501".equals(e.getSQLState()), "got " + e.getSQLState());
                expect(e.getMessage().contains("pgward"), e.getMessage());
            }
            expect(scalar(conn, "select count(*) from items") > 0, "items is empty");
        });

        check("soft_delete_rowcount", () -> {
            try (PreparedStatement ps = conn.prepareStatement("delete from items where id = ?")) {
                ps.setInt(1, 50);
                int n = ps.executeUpdate();
                expect(n == 1, "executeUpdate returned " + n);
            }
            try (Statement s = conn.createStatement();
                 ResultSet rs = s.executeQuery("select deleted_at is not null, deleted_by from items where id = 50")) {
                expect(rs.next() && rs.getBoolean(1) && System.getenv("PGUSER").equals(rs.getString(2)),
                        "row not marked as deleted");
            }
        });

        check("rls_context", () -> {
            String user = System.getenv("PGUSER");
            try (Statement s = conn.createStatement()) {
                try (ResultSet rs = s.executeQuery("select current_setting('app.current_user_id')")) {
                    expect(rs.next() && user.equals(rs.getString(1)), "context setting not pinned");
                }
                try (ResultSet rs = s.executeQuery("select owner from notes")) {
                    expect(rs.next() && user.equals(rs.getString(1)) && !rs.next(), "RLS let through other rows");
                }
                String st = sqlState(() -> s.execute("set app.current_user_id = 'intruder'"));
                expect(st.equals("42501"), "spoofing: " + st);
                try (ResultSet rs = s.executeQuery("select current_setting('app.current_user_id')")) {
                    expect(rs.next() && user.equals(rs.getString(1)), "context changed");
                }
            }
        });

        check("batch_insert", () -> {
            try (PreparedStatement ps = conn.prepareStatement("insert into items (id, name) values (?, ?)")) {
                for (int i = 200; i < 250; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "batch " + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expect(counts.length == 50, "counts " + counts.length);
                for (int c : counts) expect(c == 1, "update count " + c);
            }
            expect(scalar(conn, "select count(*) from items where id between 200 and 249") == 50, "rows missing");
        });

        check("blocked_in_batch", () -> {
            // A blocked statement in an autocommit batch must fail like a
            // server error in the same place: compare with 1/0 there.
            String server = batchOutcome("select 1 / 0", 610);
            String blocked = batchOutcome("truncate items", 600);
            expect(blocked.startsWith("42501 "), "blocked: " + blocked);
            expect(blocked.substring(6).equals(server.substring(6)), "blocked " + blocked + " vs server error " + server);
            expect(scalar(conn, "select count(*) from items") > 0, "items is empty");
        });

        check("large_object", () -> {
            // LargeObjectManager uses FunctionCall messages (lo_* allowed by
            // policy.function_call_allow in compat/run.sh).
            byte[] data = new byte[200_000];
            for (int i = 0; i < data.length; i++) data[i] = (byte) (i * 31);
            byte[] tail;
            conn.setAutoCommit(false);
            try {
                LargeObjectManager lom = conn.unwrap(PGConnection.class).getLargeObjectAPI();
                long oid = lom.createLO(LargeObjectManager.READWRITE);
                LargeObject lo = lom.open(oid, LargeObjectManager.WRITE);
                lo.write(data);
                lo.close();
                lo = lom.open(oid, LargeObjectManager.READ);
                lo.seek(1000);
                tail = lo.read(data.length);
                lo.close();
                lom.delete(oid);
                conn.commit();
            } finally {
                if (!conn.getAutoCommit()) conn.rollback();
                conn.setAutoCommit(true);
            }
            expect(java.util.Arrays.equals(tail, java.util.Arrays.copyOfRange(data, 1000, data.length)),
                    "read back " + tail.length + " bytes that differ");
        });

        check("fetch_size_cursor", () -> {
            // A fetch size with autocommit off makes pgJDBC use a portal and
            // Execute with a row limit (PortalSuspended between batches).
            conn.setAutoCommit(false);
            long total = 0;
            try (Statement s = conn.createStatement()) {
                s.setFetchSize(100);
                try (ResultSet rs = s.executeQuery("select g from generate_series(1, 1000) g")) {
                    while (rs.next()) total += rs.getLong(1);
                }
            }
            conn.commit();
            conn.setAutoCommit(true);
            expect(total == 500500, "sum " + total);
        });

        if (conn != null) conn.close();
        System.exit(failed == 0 ? 0 : 1);
    }
}
