/*
 * Writes JanusGraph-shaped SSTables ((key blob, column1 blob, value blob, PRIMARY KEY (key, column1)),
 * LZ4) offline with Cassandra's own CQLSSTableWriter, from rows streamed on stdin by
 * tests/stack/fastseed.py. Compiled and run by that module against the cassandra-all jars of the
 * target version; the SSTables are then loaded with `nodetool import`.
 *
 * Usage: java -cp <classes>:<cassandra lib>/* FastSeed <out dir> <keyspace> <buffer MiB>
 *
 * Stdin frames (big-endian, as DataOutputStream writes them):
 *   'T' u16 len, table name (UTF-8)   start a table: rows go to <out dir>/<table>/ from now on
 *   'R' i32 len, key; i32 len, column1; i32 len, value   one row of the current table
 *   'E'                                  end of input
 * On success prints one line per table on stdout: "<table> <rows>".
 */
import java.io.BufferedInputStream;
import java.io.DataInputStream;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Pattern;

import org.apache.cassandra.io.sstable.CQLSSTableWriter;

public final class FastSeed {
    private static final Pattern IDENTIFIER = Pattern.compile("^[A-Za-z][A-Za-z0-9_]{0,47}$");

    private FastSeed() {}

    private static String quoted(String name) {
        if (!IDENTIFIER.matcher(name).matches())
            throw new IllegalArgumentException("not a valid CQL identifier: " + name);
        return "\"" + name + "\"";
    }

    private static ByteBuffer blob(DataInputStream in) throws IOException {
        int len = in.readInt();
        if (len < 0)
            throw new IOException("negative length " + len);
        byte[] bytes = new byte[len];
        in.readFully(bytes);
        return ByteBuffer.wrap(bytes);
    }

    private static CQLSSTableWriter open(File outDir, String keyspace, String table, int bufferMiB) {
        File dir = new File(outDir, table);
        if (!dir.isDirectory() && !dir.mkdirs())
            throw new IllegalStateException("cannot create " + dir);
        String name = quoted(keyspace) + "." + quoted(table);
        return CQLSSTableWriter.builder()
                .inDirectory(dir.getPath())
                .forTable("CREATE TABLE " + name + " (key blob, column1 blob, value blob, "
                          + "PRIMARY KEY (key, column1)) WITH compression = {'class': 'LZ4Compressor'}")
                .using("INSERT INTO " + name + " (key, column1, value) VALUES (?, ?, ?)")
                .withBufferSizeInMiB(bufferMiB)
                .build();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: FastSeed <out dir> <keyspace> <buffer MiB>");
            System.exit(2);
        }
        File outDir = new File(args[0]);
        String keyspace = args[1];
        int bufferMiB = Integer.parseInt(args[2]);
        Map<String, Long> counts = new LinkedHashMap<>();
        DataInputStream in = new DataInputStream(new BufferedInputStream(System.in, 1 << 20));
        CQLSSTableWriter writer = null;
        String table = null;
        try {
            while (true) {
                int tag = in.read();
                if (tag == 'R') {
                    if (writer == null)
                        throw new IOException("row before any table frame");
                    writer.rawAddRow(blob(in), blob(in), blob(in));
                    counts.merge(table, 1L, Long::sum);
                } else if (tag == 'T') {
                    if (writer != null)
                        writer.close();
                    byte[] name = new byte[in.readUnsignedShort()];
                    in.readFully(name);
                    table = new String(name, StandardCharsets.UTF_8);
                    writer = open(outDir, keyspace, table, bufferMiB);
                    counts.putIfAbsent(table, 0L);
                } else if (tag == 'E') {
                    break;
                } else {
                    throw new IOException(tag < 0 ? "input ended without an 'E' frame" : "bad frame tag " + tag);
                }
            }
        } finally {
            if (writer != null)
                writer.close();
        }
        for (Map.Entry<String, Long> e : counts.entrySet())
            System.out.println(e.getKey() + " " + e.getValue());
        System.out.flush();
        System.exit(0);  // the writer leaves non-daemon threads behind
    }
}
