// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import java.io.IOException;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.net.URI;
import java.nio.channels.AsynchronousFileChannel;
import java.nio.channels.FileChannel;
import java.nio.channels.SeekableByteChannel;
import java.nio.file.AccessMode;
import java.nio.file.CopyOption;
import java.nio.file.DirectoryStream;
import java.nio.file.FileStore;
import java.nio.file.FileSystem;
import java.nio.file.FileSystems;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.OpenOption;
import java.nio.file.Path;
import java.nio.file.PathMatcher;
import java.nio.file.WatchService;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.FileAttribute;
import java.nio.file.attribute.FileAttributeView;
import java.nio.file.attribute.UserPrincipalLookupService;
import java.nio.file.spi.FileSystemProvider;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A fixture directory seen through a file system that counts how often each of its directories is listed, for a test
 * that shows how many times code reads a tree (a fixture /proc scanned once per command, not once per device). Hand
 * {@link #root()} to the code in place of the directory; every operation but a watch service goes through to the real
 * files, and a path of the view equals only paths of the same view.
 */
public final class DirectoryReads {
    private final Path realRoot;
    private final Map<Path, AtomicInteger> listings = new ConcurrentHashMap<>();
    private final CountingFileSystem fs = new CountingFileSystem();
    private final CountingProvider provider = new CountingProvider();

    private DirectoryReads(Path realRoot) {
        this.realRoot = realRoot.toAbsolutePath().normalize();
    }

    /** A counting view of {@code dir}, a directory of the default file system. */
    public static DirectoryReads of(Path dir) {
        return new DirectoryReads(dir);
    }

    /** {@code dir} as the counting file system sees it. */
    public Path root() {
        return wrap(realRoot);
    }

    /** How many times the directory at {@code relative} ("" for the root) was listed so far. */
    public int listings(String relative) {
        AtomicInteger n = listings.get(realRoot.resolve(relative).normalize());
        return n == null ? 0 : n.get();
    }

    private Path wrap(Path real) {
        return (Path)
                Proxy.newProxyInstance(Path.class.getClassLoader(), new Class<?>[] {Path.class}, new PathHandler(real));
    }

    private static Path unwrap(Path p) {
        return p != null && Proxy.isProxyClass(p.getClass()) && Proxy.getInvocationHandler(p) instanceof PathHandler h
                ? h.real
                : p;
    }

    /** A path of the counting file system: the real one's answers, with its paths seen through the view again. */
    private final class PathHandler implements java.lang.reflect.InvocationHandler {
        final Path real;

        PathHandler(Path real) {
            this.real = real;
        }

        @Override
        public Object invoke(Object proxy, Method m, Object[] args) throws Throwable {
            switch (m.getName()) {
                case "getFileSystem":
                    return fs;
                case "equals": // as Path.equals: a path of another file system (the real one too) is another path
                    return args[0] instanceof Path p && p.getFileSystem() == fs && real.equals(unwrap(p));
                case "iterator": {
                    List<Path> names = new ArrayList<>();
                    real.iterator().forEachRemaining(n -> names.add(wrap(n)));
                    return names.iterator();
                }
                case "register":
                    throw new UnsupportedOperationException("no watch service on " + real);
                default:
                    break;
            }
            Object[] a = args == null ? null : args.clone();
            if (a != null) {
                for (int i = 0; i < a.length; i++) {
                    if (a[i] instanceof Path p) {
                        a[i] = unwrap(p);
                    }
                }
            }
            Object r;
            try {
                r = m.invoke(real, a);
            } catch (InvocationTargetException e) {
                throw e.getCause();
            }
            return r instanceof Path p && !m.getName().equals("toFile") ? wrap(p) : r;
        }
    }

    private final class CountingFileSystem extends FileSystem {
        private final FileSystem real = FileSystems.getDefault();

        @Override
        public FileSystemProvider provider() {
            return provider;
        }

        @Override
        public void close() {}

        @Override
        public boolean isOpen() {
            return true;
        }

        @Override
        public boolean isReadOnly() {
            return false;
        }

        @Override
        public String getSeparator() {
            return real.getSeparator();
        }

        @Override
        public Iterable<Path> getRootDirectories() {
            List<Path> roots = new ArrayList<>();
            real.getRootDirectories().forEach(r -> roots.add(wrap(r)));
            return roots;
        }

        @Override
        public Iterable<FileStore> getFileStores() {
            return real.getFileStores();
        }

        @Override
        public Set<String> supportedFileAttributeViews() {
            return real.supportedFileAttributeViews();
        }

        @Override
        public Path getPath(String first, String... more) {
            return wrap(real.getPath(first, more));
        }

        @Override
        public PathMatcher getPathMatcher(String syntaxAndPattern) {
            PathMatcher m = real.getPathMatcher(syntaxAndPattern);
            return p -> m.matches(unwrap(p));
        }

        @Override
        public UserPrincipalLookupService getUserPrincipalLookupService() {
            return real.getUserPrincipalLookupService();
        }

        @Override
        public WatchService newWatchService() {
            throw new UnsupportedOperationException("no watch service on a counting view");
        }
    }

    private final class CountingProvider extends FileSystemProvider {
        @Override
        public String getScheme() {
            return "counting";
        }

        @Override
        public FileSystem newFileSystem(URI uri, Map<String, ?> env) {
            throw new UnsupportedOperationException();
        }

        @Override
        public FileSystem getFileSystem(URI uri) {
            throw new UnsupportedOperationException();
        }

        @Override
        public Path getPath(URI uri) {
            throw new UnsupportedOperationException();
        }

        @Override
        public SeekableByteChannel newByteChannel(
                Path path, Set<? extends OpenOption> options, FileAttribute<?>... attrs) throws IOException {
            return Files.newByteChannel(unwrap(path), options, attrs);
        }

        @Override
        public FileChannel newFileChannel(Path path, Set<? extends OpenOption> options, FileAttribute<?>... attrs)
                throws IOException {
            return FileChannel.open(unwrap(path), options, attrs);
        }

        @Override
        public AsynchronousFileChannel newAsynchronousFileChannel(
                Path path, Set<? extends OpenOption> options, ExecutorService executor, FileAttribute<?>... attrs)
                throws IOException {
            return AsynchronousFileChannel.open(unwrap(path), options, executor, attrs);
        }

        @Override
        public DirectoryStream<Path> newDirectoryStream(Path dir, DirectoryStream.Filter<? super Path> filter)
                throws IOException {
            Path real = unwrap(dir);
            listings.computeIfAbsent(real.toAbsolutePath().normalize(), k -> new AtomicInteger())
                    .incrementAndGet();
            DirectoryStream<Path> s = Files.newDirectoryStream(real, p -> filter.accept(wrap(p)));
            return new DirectoryStream<>() {
                @Override
                public Iterator<Path> iterator() {
                    Iterator<Path> it = s.iterator();
                    return new Iterator<>() {
                        @Override
                        public boolean hasNext() {
                            return it.hasNext();
                        }

                        @Override
                        public Path next() {
                            return wrap(it.next());
                        }
                    };
                }

                @Override
                public void close() throws IOException {
                    s.close();
                }
            };
        }

        @Override
        public void createDirectory(Path dir, FileAttribute<?>... attrs) throws IOException {
            Files.createDirectory(unwrap(dir), attrs);
        }

        @Override
        public void createSymbolicLink(Path link, Path target, FileAttribute<?>... attrs) throws IOException {
            Files.createSymbolicLink(unwrap(link), unwrap(target), attrs);
        }

        @Override
        public void createLink(Path link, Path existing) throws IOException {
            Files.createLink(unwrap(link), unwrap(existing));
        }

        @Override
        public Path readSymbolicLink(Path link) throws IOException {
            return Files.readSymbolicLink(unwrap(link)); // the target as written, not a path of the view
        }

        @Override
        public void delete(Path path) throws IOException {
            Files.delete(unwrap(path));
        }

        @Override
        public void copy(Path source, Path target, CopyOption... options) throws IOException {
            Files.copy(unwrap(source), unwrap(target), options);
        }

        @Override
        public void move(Path source, Path target, CopyOption... options) throws IOException {
            Files.move(unwrap(source), unwrap(target), options);
        }

        @Override
        public boolean isSameFile(Path path, Path path2) throws IOException {
            return Files.isSameFile(unwrap(path), unwrap(path2));
        }

        @Override
        public boolean isHidden(Path path) throws IOException {
            return Files.isHidden(unwrap(path));
        }

        @Override
        public FileStore getFileStore(Path path) throws IOException {
            return Files.getFileStore(unwrap(path));
        }

        @Override
        public void checkAccess(Path path, AccessMode... modes) throws IOException {
            Path real = unwrap(path);
            real.getFileSystem().provider().checkAccess(real, modes);
        }

        @Override
        public <V extends FileAttributeView> V getFileAttributeView(Path path, Class<V> type, LinkOption... options) {
            return Files.getFileAttributeView(unwrap(path), type, options);
        }

        @Override
        public <A extends BasicFileAttributes> A readAttributes(Path path, Class<A> type, LinkOption... options)
                throws IOException {
            return Files.readAttributes(unwrap(path), type, options);
        }

        @Override
        public Map<String, Object> readAttributes(Path path, String attributes, LinkOption... options)
                throws IOException {
            return Files.readAttributes(unwrap(path), attributes, options);
        }

        @Override
        public void setAttribute(Path path, String attribute, Object value, LinkOption... options) throws IOException {
            Files.setAttribute(unwrap(path), attribute, value, options);
        }
    }
}
