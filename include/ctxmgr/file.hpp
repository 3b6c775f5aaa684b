// ctxmgr/file.hpp: files whose buffered writes are never silently lost, atomic and durable
// writes, and temporary files and directories.
//
// Python's `with open(path, "w") as f:` in C++. A ctxmgr::file is a POSIX descriptor with
// its own buffer; leaving the with flushes and closes it, and a failure of either is thrown,
// not dropped (a std::ofstream that cannot write its buffer in its destructor says nothing).
//
//   ctxmgr::with(ctxmgr::open("hello.txt", "w"), [](ctxmgr::file& f) {
//       f.write("Hello, world!\n");
//   });                                   // flushed and closed here; a failure throws
//
//   ctxmgr::with(ctxmgr::atomic_write("settings.ini"), [](ctxmgr::file& f) {
//       f.write("threads = 4\n");         // a throw here leaves settings.ini as it was
//   });                                   // fsync, rename over settings.ini, fsync the dir
//
//   std::string text = ctxmgr::open("hello.txt").read_all();   // closed at the semicolon
//
// Guarantees:
//   - On error: every failing system call throws io_error (errors.hpp), whose code() is the
//     errno and whose message names the operation and the path: `write "/tmp/x": No space
//     left on device`. EINTR is retried, close(2) never (Linux has released the descriptor
//     whatever close returns). Using a closed file throws closed_error. Members not marked
//     noexcept may also throw std::bad_alloc.
//   - Never silently lost: exit() and close() flush, then close, and throw what failed;
//     with an exception pending, exit() still flushes and closes and throws a failure with
//     the pending exception nested (throw_chained). The descriptor is closed on every path,
//     failure or not. A file destroyed open is flushed and closed by its destructor, and a
//     failure there goes to the unraisable hook as `file "/tmp/x": close in destructor`.
//   - Everything acquired here is registered with the leak tracker (tracking.hpp) under its
//     path, naming the caller's line.
//   - Thread-compatible: different files may be used from different threads; one file must
//     not be used by two threads at once without synchronization (as std::fstream, FILE*
//     under fwrite_unlocked). POSIX thread cancellation (pthread_cancel) is not supported:
//     the system calls of a destructor, of a flush and of read_all() run inside noexcept
//     code, where glibc's cancellation unwinding calls std::terminate.
//
// Text and binary modes ("t", "b") are the same: no newline translation and no encoding in
// either. Reading returns the bytes in a std::string; lines keep their '\n' (Python's
// readline), so the last line of a file without a final newline is the only one without.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <ios>
#include <iterator>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <string_view>

#include "errors.hpp"
#include "tracking.hpp"

namespace ctxmgr {

// How a file is opened.
struct open_options {
    // Bytes buffered before a write(2), and read ahead by read(2). 0 makes writes unbuffered
    // (each write() is one write(2)); reading line by line then takes a byte per read(2).
    std::size_t buffer_size = 64 * 1024;
    // The permission bits of a file the open creates, before the process's umask.
    std::filesystem::perms permissions =
        std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
        std::filesystem::perms::group_read | std::filesystem::perms::group_write |
        std::filesystem::perms::others_read | std::filesystem::perms::others_write;
    // fsync(2) the data on close, after the flush and before close(2).
    bool sync_on_close = false;
};

class file;
class atomic_write;

// Opens `path` with Python's `mode`: one of "r" (read), "w" (write, truncate or create), "a"
// (append, create), "x" (create; the file must not exist), each optionally with "+" (read
// and write) and one of "b" or "t" (which change nothing), in any order. The descriptor is
// O_CLOEXEC. Throws std::invalid_argument naming a bad mode (nothing is opened), io_error
// when open(2) fails (`open "/x": No such file or directory`; `x` on an existing file:
// EEXIST) and, as Python, when "r" names a directory (EISDIR).
[[nodiscard]] file open(const std::filesystem::path& path, std::string_view mode = "r",
                        open_options options = {},
                        std::source_location where = std::source_location::current());

// Creates a file open for reading and writing ("w+b"), with permissions 0600, named
// `prefix` and random characters in the temporary directory ($TMPDIR, else /tmp; see
// std::filesystem::temp_directory_path). path() names it; it is removed when the file closes
// (if it is already gone, that is not an error). options.permissions is not used. Throws
// std::invalid_argument for a prefix with a '/', io_error when it cannot be created.
[[nodiscard]] file temporary_file(std::string_view prefix = "ctxmgr-", open_options options = {},
                                  std::source_location where = std::source_location::current());

// An open file: a move-only context manager over a descriptor and its buffer. enter()
// returns the file itself, exit() closes it (see the guarantees above).
//
// Reads and writes share one buffer, as Python's BufferedRandom: switching from writing to
// reading flushes, switching from reading to writing gives the read-ahead back to the
// descriptor with lseek. native_handle() is the descriptor: flush() before writing to it
// directly, and do not close it.
class [[nodiscard]] file {
  public:
    // A closed file: closed() is true and every operation but close() throws closed_error.
    file() noexcept = default;

    file(file&& other) noexcept;
    // Closes this file first, so it is not noexcept: if that close throws, this file is
    // closed (its descriptor released) and `other` is left as it was.
    file& operator=(file&& other);
    file(const file&) = delete;
    file& operator=(const file&) = delete;

    // Flushes and closes what is still open; a failure goes to the unraisable hook.
    ~file();

    // Throws closed_error if the file is closed.
    file& enter();
    // close(), chaining a failure with `e` when one is pending.
    void exit(const std::exception_ptr& e);

    // Appends to the buffer, writing it out with write(2) when it is full. Writes of a buffer
    // size or more go straight to the descriptor. Throws io_error(EBADF) on a file not open
    // for writing: `write "/tmp/x": not writable: Bad file descriptor`.
    void write(std::string_view text) {
        // Strictly smaller: a write that fills the buffer, an empty one (whose data() may be
        // null) and every write outside the writing state (no room) take the slow path.
        if (!text.empty() && text.size() < static_cast<std::size_t>(put_end_ - put_)) {
            std::memcpy(put_, text.data(), text.size());
            put_ += text.size();
            return;
        }
        write_slow(text.data(), text.size());
    }
    void write(std::span<const std::byte> bytes) {
        write(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    }

    // Up to n bytes: fewer only at the end of the file (reads until n or EOF, as Python's
    // BufferedReader), or where a non-blocking descriptor would block after some bytes came
    // (with none, io_error with EAGAIN). Empty at the end. Throws io_error(EBADF) on a file
    // not open for reading: `read "/tmp/x": not readable: Bad file descriptor`.
    [[nodiscard]] std::string read(std::size_t n);
    // Fills `into` up to its size, or to the end of the file; returns the bytes read.
    [[nodiscard]] std::size_t read(std::span<std::byte> into);
    // Everything from the current position to the end (or to where a non-blocking descriptor
    // would block, as read(n)). The result is sized from fstat once, so it is never copied to
    // grow (for a regular file), and read(2) writes into it directly.
    [[nodiscard]] std::string read_all();
    // The next line with its '\n', or at most `limit` bytes of it; empty at the end.
    [[nodiscard]] std::string readline(std::size_t limit = std::string::npos);

    class line_range;
    // The remaining lines, each with its '\n', as an input range whose elements are
    // `const std::string&` to one string the range reuses (like std::views::istream): valid
    // until the next increment; copy what you keep. Read errors throw from begin() and ++.
    // The range refers to this file, which must not move while it is iterated.
    //   for (const std::string& line : f.lines()) count += line.size();
    // Not on a temporary file: in `for (auto& line : ctxmgr::open(p).lines())` the file would
    // be closed before the loop starts (C++20 does not extend its life), so that is an error.
    [[nodiscard]] line_range lines() &;
    line_range lines() && = delete;

    // Writes the buffer out (write(2) until done). On failure the bytes not written stay in
    // the buffer, and the next flush or close tries them again.
    void flush();
    // flush(), then fsync(2). A failed fsync is never retried: Linux may have dropped the
    // dirty pages already and a second fsync could report success for data that is gone
    // (PostgreSQL's fsync lesson, 2018). Later sync() calls throw the same error again.
    void sync();

    // Moves the position (flushing writes, dropping read-ahead); returns the new position.
    // Throws io_error(EINVAL) for a negative result, ESPIPE on a pipe.
    std::uint64_t seek(std::int64_t offset, std::ios_base::seekdir from = std::ios_base::beg);
    // The position the next read or write uses, buffered bytes included.
    [[nodiscard]] std::uint64_t tell();
    // Flushes, then sets the size to `size` (default: the current position). The position
    // does not move. Returns the new size.
    std::uint64_t truncate();
    std::uint64_t truncate(std::uint64_t size);

    // Flushes (and fsyncs with sync_on_close), then closes; removes a temporary_file.
    // Idempotent: closing a closed file does nothing. Every step is attempted, and the
    // descriptor is released, even when an earlier one fails. Each failure is thrown with the
    // one before it nested (Python's __context__ order): the outermost is the last failure,
    // e.g. close's EIO with the flush's ENOSPC inside.
    void close();
    [[nodiscard]] bool closed() const noexcept { return fd_ < 0; }

    // The path the file was opened with (an atomic_write's file: the target).
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    // The descriptor, or -1 once the file is closed.
    [[nodiscard]] int native_handle() const noexcept { return fd_; }

  private:
    friend file open(const std::filesystem::path&, std::string_view, open_options,
                     std::source_location);
    friend file temporary_file(std::string_view, open_options, std::source_location);
    friend class atomic_write;

    // An unopened file that will use these settings; the caller then sets fd_.
    file(std::filesystem::path path, const open_options& options, bool readable, bool writable);
    void take(file& other) noexcept;

    void write_slow(const char* data, std::size_t size);
    bool read_line_into(std::string& line, std::size_t limit);
    void close_chained(const std::exception_ptr& pending);
    [[nodiscard]] int flush_pending() noexcept;
    void require_open(std::string_view operation) const;
    void begin_reading();
    void begin_writing();
    std::size_t fill();
    std::size_t take_buffered(char* into, std::size_t size) noexcept;
    void read_direct(std::string& out, std::size_t limit);
    [[nodiscard]] std::size_t size_hint() const noexcept;
    void drop_read_ahead();
    char* allocate_buffer();
    [[nodiscard]] std::size_t read_capacity() const noexcept;
    // Closes the descriptor without flushing, drops the buffer and the registration; returns
    // close's errno (0 for success or EINTR).
    int close_descriptor() noexcept;

    int fd_ = -1;
    std::filesystem::path path_;
    std::unique_ptr<char[]> buffer_;
    std::size_t buffer_size_ = 0;  // open_options::buffer_size
    // Writing: [buffer_, put_) is pending and [put_, put_end_) free. Otherwise both are null,
    // so the inline write finds no room.
    char* put_ = nullptr;
    char* put_end_ = nullptr;
    // Reading: [get_, get_end_) is read ahead and not yet returned.
    char* get_ = nullptr;
    char* get_end_ = nullptr;
    int sync_error_ = 0;  // errno of a failed fsync, reported again and never retried
    bool readable_ = false;
    bool writable_ = false;
    bool sync_on_close_ = false;
    bool remove_on_close_ = false;  // a temporary_file
    [[no_unique_address]] tracked tracked_;
};

// The lines of a file (file::lines()): an input range of `const std::string&`.
class file::line_range {
  public:
    class iterator {
      public:
        using iterator_concept = std::input_iterator_tag;
        using value_type = std::string;
        using difference_type = std::ptrdiff_t;
        using reference = const std::string&;

        iterator() noexcept = default;
        reference operator*() const noexcept { return range_->line_; }
        const std::string* operator->() const noexcept { return &range_->line_; }
        iterator& operator++() {
            range_->next();
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
            return it.at_end();
        }

      private:
        friend class line_range;
        explicit iterator(line_range* range) noexcept : range_(range) {}
        [[nodiscard]] bool at_end() const noexcept { return range_ == nullptr || range_->done_; }
        line_range* range_ = nullptr;
    };

    explicit line_range(file& f) noexcept : file_(&f) {}

    // Reads the first line.
    iterator begin() {
        next();
        return iterator(this);
    }
    std::default_sentinel_t end() const noexcept { return {}; }

  private:
    void next() {
        // A whole line in the buffer, the common case, is taken here without a call; the
        // pointers are equal unless the file is open and reading.
        file& f = *file_;
        char* const begin = f.get_;
        if (begin != f.get_end_) {
            const auto available = static_cast<std::size_t>(f.get_end_ - begin);
            if (const void* newline = std::memchr(begin, '\n', available)) {
                const auto length =
                    static_cast<std::size_t>(static_cast<const char*>(newline) - begin) + 1;
                f.get_ = begin + length;
                // clear + append: libstdc++'s append is a third of assign's general replace.
                line_.clear();
                line_.append(begin, length);
                return;
            }
        }
        done_ = !f.read_line_into(line_, std::string::npos);
    }

    file* file_;
    std::string line_;
    bool done_ = false;
};

inline file::line_range file::lines() & {
    require_open("lines");
    return line_range(*this);
}

// Replaces `path` with new contents all at once, or not at all: Python's atomic-write
// recipe. The constructor creates a temporary file in the target's directory (O_TMPFILE, an
// unnamed file, where the file system allows; a hidden unique name otherwise); enter()
// returns it as a file (whose path() is the target). exit() with no exception commits:
// flush, fsync the data, rename over the target, fsync the directory. With an exception it
// discards: the temporary is removed, the target is untouched, the exception propagates.
//
//   ctxmgr::with(ctxmgr::atomic_write("state.bin"), [&](ctxmgr::file& f) { f.write(bytes); });
//
// A process killed at any moment leaves the target with the old or the new contents in
// full, never a mix (a kill between the link and the rename can leave a hidden temporary
// named `.<name>.<random>.tmp` beside it). A replaced file keeps its permission bits (not its
// owner); a new one gets options.permissions less the umask. A symbolic link at `path` is
// replaced by the file, as rename(2) does, not followed. options.sync_on_close is not used:
// a commit always fsyncs.
//
// Errors: io_error naming the target. A failed fsync of the data is never retried and never
// followed by the rename: the target keeps its old bytes and the temporary is removed. If
// the directory's fsync fails, the rename has happened: the new contents are in place but
// may not survive a crash, and commit() throws io_error(`fsync directory "/dir"`). Closing
// the file inside the block (or moving it away) makes the commit throw closed_error (the
// data of an unnamed temporary is gone with its descriptor), and the target is untouched.
//
// The destructor of an atomic write neither committed nor discarded discards it (as a
// transaction rolls back): only commit() and a clean exit() replace the target.
// Thread-compatible.
class [[nodiscard]] atomic_write {
  public:
    explicit atomic_write(std::filesystem::path path, open_options options = {},
                          std::source_location where = std::source_location::current());
    atomic_write(atomic_write&& other) noexcept;
    // Discards this one first, so it may throw (see file's move assignment).
    atomic_write& operator=(atomic_write&& other);
    atomic_write(const atomic_write&) = delete;
    atomic_write& operator=(const atomic_write&) = delete;
    ~atomic_write();

    // The temporary file. Throws closed_error after commit() or discard().
    file& enter();
    // No exception: commit(). An exception: discard(), chaining a failure with it.
    void exit(const std::exception_ptr& e);

    // Replaces the target (see above). Idempotent once it succeeded; after discard() or a
    // failed commit it throws closed_error.
    void commit();
    // Removes the temporary and leaves the target alone. Idempotent; after commit() it does
    // nothing (the target was replaced). Throws io_error if the temporary cannot be removed.
    void discard();

    // The target.
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return target_; }
    // True after a successful commit().
    [[nodiscard]] bool committed() const noexcept { return state_ == state::committed; }
    // True once committed or discarded: nothing is left to release.
    [[nodiscard]] bool closed() const noexcept { return state_ != state::open; }

  private:
    enum class state { open, committed, discarded };

    void take(atomic_write& other) noexcept;
    void create_temporary(const open_options& options);
    void discard_chained(const std::exception_ptr& pending);
    // Closes and removes the temporary and closes the directory; returns unlink's errno.
    int release_temporary() noexcept;
    [[noreturn]] void fail(std::string_view operation, int error_number);

    std::filesystem::path target_;
    std::filesystem::path directory_;       // the target's
    std::string name_;                      // the target's name in its directory
    std::filesystem::path temporary_name_;  // the temporary's name there; empty while it has none
    int directory_fd_ = -1;
    state state_ = state::discarded;
    file file_;
    [[no_unique_address]] tracked tracked_;
};

// A directory created with a unique name, `prefix` and random characters, in the temporary
// directory ($TMPDIR, else /tmp), permissions 0700; enter() returns its path, exit() removes
// it and everything in it (Python's tempfile.TemporaryDirectory). Entries that cannot be
// removed for want of permission are given it and removed, as Python does. Throws
// std::invalid_argument for a prefix with a '/', io_error when creating or removing fails.
//
//   ctxmgr::with(ctxmgr::temporary_directory(), [](const std::filesystem::path& dir) { ... });
//
// The destructor removes what is left; a failure goes to the unraisable hook.
// Thread-compatible.
class [[nodiscard]] temporary_directory {
  public:
    explicit temporary_directory(std::string_view prefix = "ctxmgr-",
                                 std::source_location where = std::source_location::current());
    temporary_directory(temporary_directory&& other) noexcept;
    // Removes this one first, so it may throw (see file's move assignment).
    temporary_directory& operator=(temporary_directory&& other);
    temporary_directory(const temporary_directory&) = delete;
    temporary_directory& operator=(const temporary_directory&) = delete;
    ~temporary_directory();

    // The directory. Throws closed_error once it is removed.
    const std::filesystem::path& enter();
    // remove(), chaining a failure with `e` when one is pending.
    void exit(const std::exception_ptr& e);

    // Removes the tree. Idempotent; a directory someone else removed is not an error.
    void remove();
    [[nodiscard]] bool removed() const noexcept { return !live_; }
    // The resources' common query: true once removed (or moved from).
    [[nodiscard]] bool closed() const noexcept { return !live_; }

    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

  private:
    void remove_chained(const std::exception_ptr& pending);

    std::filesystem::path path_;
    bool live_ = false;
    [[no_unique_address]] tracked tracked_;
};

}  // namespace ctxmgr
