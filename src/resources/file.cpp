// The compiled part of file.hpp: opening, the slow paths of the buffer, closing, atomic
// writes, temporary files and directories.
#include <ctxmgr/file.hpp>
#include <ctxmgr/release.hpp>
#include <ctxmgr/unraisable.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "support/posix_support.hpp"

namespace ctxmgr {

namespace {

namespace fs = std::filesystem;

using detail::close_once;
using detail::quoted;
using detail::read_appending;
using detail::retry;
using detail::throw_errno;

// Adds `operation "path": strerror(error_number)` to `failures` when error_number is not 0.
void add_failure(failure_chain& failures, std::string_view operation, const fs::path& path,
                 int error_number) {
    if (error_number != 0) failures.add(io_error(operation, path.string(), error_number));
}

// `kind "path"`, as the unraisable hook names a file-like resource.
std::string described(std::string_view kind, const fs::path& path) {
    std::string text(kind);
    text += ' ';
    text += quoted(path);
    return text;
}

// write(2) until all of [data, data + size) is written; returns 0 or the errno, with `done`
// the bytes written.
int write_all(int fd, const char* data, std::size_t size, std::size_t& done) noexcept {
    done = 0;
    while (done < size) {
        const ssize_t n = ::write(fd, data + done, size - done);
        if (n > 0) {
            done += static_cast<std::size_t>(n);
        } else if (n == 0) {
            return EIO;  // no progress and no errno: retrying would spin
        } else if (errno != EINTR) {
            return errno;
        }
    }
    return 0;
}

struct mode_flags {
    int flags = 0;
    bool readable = false;
    bool writable = false;
    bool append = false;
};

// Python's open() modes: exactly one of r, w, a, x; at most one +; at most one of b, t.
mode_flags parse_mode(std::string_view mode, const fs::path& path) {
    const auto bad = [&](std::string_view why) {
        return std::invalid_argument("open " + quoted(path) + ": invalid mode \"" +
                                     std::string(mode) + "\": " + std::string(why));
    };
    char kind = 0;
    bool plus = false, text = false, binary = false;
    for (const char c : mode) {
        switch (c) {
            case 'r':
            case 'w':
            case 'a':
            case 'x':
                if (kind != 0) throw bad("more than one of r, w, a, x");
                kind = c;
                break;
            case '+':
                if (plus) throw bad("'+' twice");
                plus = true;
                break;
            case 't':
            case 'b': {
                bool& flag = c == 't' ? text : binary;
                if (flag) throw bad(std::string("'") + c + "' twice");
                if (text || binary) throw bad("both 't' and 'b'");
                flag = true;
                break;
            }
            default:
                throw bad(std::string("unknown character '") + c + '\'');
        }
    }
    if (kind == 0) throw bad("needs one of r, w, a, x");
    mode_flags result;
    result.readable = kind == 'r' || plus;
    result.writable = kind != 'r' || plus;
    result.append = kind == 'a';
    result.flags = plus ? O_RDWR : kind == 'r' ? O_RDONLY : O_WRONLY;
    if (kind == 'w') result.flags |= O_CREAT | O_TRUNC;
    if (kind == 'a') result.flags |= O_CREAT | O_APPEND;
    if (kind == 'x') result.flags |= O_CREAT | O_EXCL;
    return result;
}

void check_prefix(std::string_view prefix, std::string_view function) {
    if (prefix.find('/') != std::string_view::npos) {
        throw std::invalid_argument(std::string(function) + ": prefix \"" + std::string(prefix) +
                                    "\" contains '/'");
    }
}

fs::path temporary_directory_path() {
    std::error_code error;
    fs::path directory = fs::temp_directory_path(error);
    if (error) {
        const char* tmpdir = std::getenv("TMPDIR");
        throw io_error("find the temporary directory", tmpdir != nullptr ? tmpdir : "/tmp",
                       error.value());
    }
    return directory;
}

// `count` random characters from [a-z0-9] for a unique name.
std::string random_characters(std::size_t count) {
    static constexpr char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char bytes[32];
    count = std::min(count, sizeof bytes);
    if (retry([&] { return ::getrandom(bytes, count, 0); }) != static_cast<ssize_t>(count)) {
        // No getrandom (a seccomp filter, an old kernel): the names need to be unlikely to
        // collide, not secret, and creation is exclusive anyway.
        static std::atomic<std::uint64_t> counter{0};
        std::uint64_t x = static_cast<std::uint64_t>(
                              std::chrono::steady_clock::now().time_since_epoch().count()) ^
                          (static_cast<std::uint64_t>(::getpid()) << 32) ^
                          counter.fetch_add(0x9e3779b97f4a7c15, std::memory_order_relaxed);
        for (std::size_t i = 0; i < count; ++i) {
            x ^= x >> 33;
            x *= 0xff51afd7ed558ccd;
            x ^= x >> 29;
            bytes[i] = static_cast<unsigned char>(x);
        }
    }
    std::string result(count, ' ');
    for (std::size_t i = 0; i < count; ++i) result[i] = alphabet[bytes[i] % (sizeof alphabet - 1)];
    return result;
}

// Calls create(name) with names `prefix`, 12 random characters, `suffix` until it succeeds
// (returns >= 0) or fails with something other than EEXIST, at most 100 times. Returns what
// create returned, with errno set on failure; `name` is the name created, empty on failure.
template <class Create>
int create_unique(std::string_view prefix, std::string_view suffix, fs::path& name, Create create) {
    for (int attempt = 0; attempt < 100; ++attempt) {
        name = std::string(prefix) + random_characters(12) + std::string(suffix);
        const int result = retry([&] { return create(name.c_str()); });
        if (result >= 0) return result;
        if (errno != EEXIST) break;
    }
    const int error = errno;
    name.clear();
    errno = error;
    return -1;
}

// Whether an O_TMPFILE descriptor can be given a name: linkat(2) through /proc/self/fd needs
// /proc (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
bool unnamed_files_can_be_linked() {
    static const bool proc = ::access("/proc/self/fd", X_OK) == 0;
    return proc;
}

// Gives the owner rwx on `directory` and every directory below it, so that their entries
// can be removed, as Python's TemporaryDirectory does on a permission error.
void make_owner_writable(const fs::path& directory) {
    std::error_code error;
    fs::permissions(directory, fs::perms::owner_all, fs::perm_options::add, error);
    for (fs::directory_iterator it(directory, error), end; !error && it != end;
         it.increment(error)) {
        if (it->is_directory(error) && !it->is_symlink(error)) make_owner_writable(it->path());
    }
}

// Asks for transparent huge pages for the whole 2 MiB pages inside a large string's buffer
// before anything is written to it: filling 100 MB of fresh memory takes 25,000 page faults,
// which cost several times the copy itself (docs/performance.md). Only for sizes that glibc
// always maps on their own (its mmap threshold grows to 32 MiB at most), so that the advice
// goes away with the string and never lands on heap memory that malloc hands out again.
void advise_huge_pages(std::string& s) noexcept {
    constexpr std::uintptr_t huge_page = std::uintptr_t{2} << 20;
    if (s.capacity() < 64 * (std::size_t{1} << 20)) return;
    const auto begin = reinterpret_cast<std::uintptr_t>(s.data());
    const std::uintptr_t first = (begin + huge_page - 1) & ~(huge_page - 1);
    const std::uintptr_t last = (begin + s.capacity()) & ~(huge_page - 1);
    // Advice only: where THP is off or the call fails, the pages are small, nothing else.
    static_cast<void>(::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE));
}

// Removes a tree; returns 0 or the errno. A tree that is already gone is not an error.
int remove_tree(const fs::path& path) {
    std::error_code error;
    fs::remove_all(path, error);
    if (error == std::errc::permission_denied || error == std::errc::operation_not_permitted) {
        make_owner_writable(path);
        error.clear();
        fs::remove_all(path, error);
    }
    return error.value();
}

}  // namespace

// --- open, temporary_file -------------------------------------------------------------------

file::file(fs::path path, const open_options& options, bool readable, bool writable)
    : path_(std::move(path)),
      buffer_size_(options.buffer_size),
      readable_(readable),
      writable_(writable),
      sync_on_close_(options.sync_on_close) {
}

file open(const fs::path& path, std::string_view mode, open_options options,
          std::source_location where) {
    const mode_flags parsed = parse_mode(mode, path);
    // Registered before the descriptor exists, so that nothing after open(2) can throw
    // before `f` owns it: from then on f's destructor closes it.
    file f(path, options, parsed.readable, parsed.writable);
    f.tracked_ = tracked("file", quoted(path), where);
    const auto permissions = static_cast<mode_t>(options.permissions & fs::perms::mask);
    const int fd =
        retry([&] { return ::open(path.c_str(), parsed.flags | O_CLOEXEC, permissions); });
    if (fd < 0) throw_errno("open", path);
    f.fd_ = fd;
    if (!parsed.writable) {
        // open(2) gives a directory to O_RDONLY; Python refuses it here rather than at read.
        struct stat status {};
        if (::fstat(fd, &status) == 0 && S_ISDIR(status.st_mode)) {
            static_cast<void>(f.close_descriptor());
            throw io_error("open", path.string(), EISDIR);
        }
    }
    // O_APPEND writes at the end anyway; this makes tell() say so before the first write.
    if (parsed.append && ::lseek(fd, 0, SEEK_END) < 0 && errno != ESPIPE) {
        throw_errno("seek", path);
    }
    return f;
}

file temporary_file(std::string_view prefix, open_options options, std::source_location where) {
    check_prefix(prefix, "temporary_file");
    const fs::path directory = temporary_directory_path();
    file f({}, options, true, true);
    f.tracked_ = tracked("temporary file", std::string(), where);
    fs::path path;
    const int fd = create_unique((directory / prefix).native(), "", path, [](const char* name) {
        return ::open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    });
    if (fd < 0) throw_errno("create a temporary file in", directory);
    f.path_ = std::move(path);
    f.fd_ = fd;
    f.remove_on_close_ = true;  // from here on f's destructor closes and removes it
    f.tracked_.describe(quoted(f.path_));
    return f;
}

// --- file: lifetime -------------------------------------------------------------------------

file::file(file&& other) noexcept {
    take(other);
}

file& file::operator=(file&& other) {
    if (this != &other) {
        close();
        take(other);
    }
    return *this;
}

void file::take(file& other) noexcept {
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    buffer_ = std::move(other.buffer_);
    buffer_size_ = other.buffer_size_;
    put_ = std::exchange(other.put_, nullptr);
    put_end_ = std::exchange(other.put_end_, nullptr);
    get_ = std::exchange(other.get_, nullptr);
    get_end_ = std::exchange(other.get_end_, nullptr);
    sync_error_ = other.sync_error_;
    readable_ = other.readable_;
    writable_ = other.writable_;
    sync_on_close_ = other.sync_on_close_;
    remove_on_close_ = std::exchange(other.remove_on_close_, false);
    tracked_ = std::move(other.tracked_);
}

file::~file() {
    if (fd_ < 0) return;
    release_in_destructor([&] { close(); }, [&] { return described("file", path_); }, "file",
                          "close in destructor");
}

file& file::enter() {
    require_open("enter");
    return *this;
}

void file::exit(const std::exception_ptr& e) {
    close_chained(e);
}

void file::close() {
    close_chained(nullptr);
}

void file::close_chained(const std::exception_ptr& pending) {
    if (fd_ < 0) return;
    // Every step runs whatever the ones before it did; exceptions are built at the end.
    const int write_error = flush_pending();
    int sync_error = 0;
    if (sync_on_close_ && writable_ && write_error == 0) {
        sync_error = sync_error_;
        if (sync_error == 0 && retry([&] { return ::fsync(fd_); }) != 0) sync_error = errno;
    }
    const int close_error = close_descriptor();
    int remove_error = 0;
    if (remove_on_close_) {
        remove_on_close_ = false;
        if (::unlink(path_.c_str()) != 0 && errno != ENOENT) remove_error = errno;
    }
    failure_chain failures(pending);
    add_failure(failures, "write", path_, write_error);
    add_failure(failures, "fsync", path_, sync_error);
    add_failure(failures, "close", path_, close_error);
    add_failure(failures, "remove", path_, remove_error);
    failures.throw_if_failed();
}

int file::close_descriptor() noexcept {
    const int error = close_once(std::exchange(fd_, -1));
    buffer_.reset();
    put_ = put_end_ = get_ = get_end_ = nullptr;
    tracked_.release();
    return error;
}

void file::require_open(std::string_view operation) const {
    if (fd_ < 0) {
        throw closed_error(std::string(operation) + ": file " + quoted(path_) + " is closed");
    }
}

// --- file: the buffer -----------------------------------------------------------------------

std::size_t file::read_capacity() const noexcept {
    return std::max<std::size_t>(buffer_size_, 1);
}

char* file::allocate_buffer() {
    buffer_ = std::make_unique_for_overwrite<char[]>(read_capacity());
    return buffer_.get();
}

int file::flush_pending() noexcept {
    char* const begin = buffer_.get();
    if (put_ == nullptr || put_ == begin) return 0;
    const auto size = static_cast<std::size_t>(put_ - begin);
    std::size_t done = 0;
    const int error = write_all(fd_, begin, size, done);
    // What was not written stays, for the next flush or the close to try again.
    std::memmove(begin, begin + done, size - done);
    put_ = begin + (size - done);
    return error;
}

void file::flush() {
    require_open("flush");
    if (const int error = flush_pending(); error != 0)
        throw io_error("write", path_.string(), error);
}

void file::sync() {
    require_open("sync");
    flush();
    if (sync_error_ != 0) {
        throw io_error("fsync (an earlier fsync failed; not retried)", path_.string(), sync_error_);
    }
    if (retry([&] { return ::fsync(fd_); }) != 0) {
        sync_error_ = errno;
        throw io_error("fsync", path_.string(), sync_error_);
    }
}

// Gives unread read-ahead back to the descriptor, so that its position is the file's.
void file::drop_read_ahead() {
    const auto unread = static_cast<off_t>(get_end_ - get_);
    if (unread != 0 && ::lseek(fd_, -unread, SEEK_CUR) < 0) {
        throw_errno("seek", path_);  // the read-ahead is still there
    }
    get_ = get_end_ = nullptr;
}

void file::begin_writing() {
    drop_read_ahead();
    if (buffer_size_ == 0) return;  // unbuffered: every write goes straight out
    char* const begin = buffer_ ? buffer_.get() : allocate_buffer();
    put_ = begin;
    put_end_ = begin + buffer_size_;
}

void file::begin_reading() {
    // An io_error with EBADF, as read(2) on the descriptor would give, so that callers catching
    // io_error or testing the errno see what the system says; the reason, Python's
    // io.UnsupportedOperation wording, says which mode is at fault. Not a protocol_error: the
    // mode came from the caller's data (a path and a mode string) as often as from code.
    if (!readable_) throw io_error("read", path_.string(), EBADF, "not readable");
    if (put_end_ != nullptr) {
        flush();
        put_ = put_end_ = nullptr;
    }
}

void file::write_slow(const char* data, std::size_t size) {
    require_open("write");
    if (!writable_) throw io_error("write", path_.string(), EBADF, "not writable");
    if (size == 0) return;
    if (put_end_ == nullptr) begin_writing();
    if (size <= static_cast<std::size_t>(put_end_ - put_)) {
        std::memcpy(put_, data, size);
        put_ += size;
        return;
    }
    flush();
    if (size < buffer_size_) {
        std::memcpy(put_, data, size);
        put_ += size;
        return;
    }
    std::size_t done = 0;
    if (const int error = write_all(fd_, data, size, done); error != 0) {
        throw io_error("write", path_.string(), error);
    }
}

std::size_t file::fill() {
    char* const begin = buffer_ ? buffer_.get() : allocate_buffer();
    const ssize_t n = retry([&] { return ::read(fd_, begin, read_capacity()); });
    if (n < 0) throw_errno("read", path_);
    get_ = begin;
    get_end_ = begin + n;
    return static_cast<std::size_t>(n);
}

std::size_t file::take_buffered(char* into, std::size_t size) noexcept {
    const std::size_t n = std::min(size, static_cast<std::size_t>(get_end_ - get_));
    if (n != 0) {
        std::memcpy(into, get_, n);
        get_ += n;
    }
    return n;
}

// The bytes from the descriptor's position to the end of a regular file, plus one, so that
// the read(2) after the one that gets them all finds EOF without growing the string; 0 when
// the size says nothing (a pipe, a terminal, /proc, whose files say 0).
std::size_t file::size_hint() const noexcept {
    struct stat status {};
    if (::fstat(fd_, &status) != 0 || !S_ISREG(status.st_mode) || status.st_size == 0) return 0;
    const off_t position = ::lseek(fd_, 0, SEEK_CUR);
    if (position < 0 || status.st_size < position) return 0;
    return static_cast<std::size_t>(status.st_size - position) + 1;
}

// Appends up to `limit` bytes to `out` (a result being made: empty, or holding what the buffer
// had), read(2) straight into its storage until the limit or EOF. A regular file's size
// (size_hint) reserves the result, huge pages advised, and the first read asks for all of it;
// without one the first read asks for a buffer's worth. Each later read asks for the room the
// string has. A full string reads into the buffer instead and appends what came, which grows
// it geometrically: the end of a pipe is found without growing the string for it. A
// descriptor that would block (O_NONBLOCK) ends the result there if it holds anything, as
// Python's read() does: what was read is never lost.
void file::read_direct(std::string& out, std::size_t limit) {
    const std::size_t hint = size_hint();
    if (hint != 0) {
        out.reserve(out.size() + std::min(limit, hint));
        advise_huge_pages(out);
    }
    std::size_t room = hint != 0 ? out.capacity() - out.size() : read_capacity();
    for (std::size_t done = 0; done < limit;) {
        ssize_t n = 0;
        if (room != 0) {
            const std::size_t ask = std::min(room, limit - done);
            n = retry([&] { return read_appending(fd_, out, ask); });
        } else {
            char* const chunk = buffer_ ? buffer_.get() : allocate_buffer();
            const std::size_t ask = std::min(read_capacity(), limit - done);
            n = retry([&] { return ::read(fd_, chunk, ask); });
            if (n > 0) out.append(chunk, static_cast<std::size_t>(n));
        }
        if (n < 0) {
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && !out.empty()) break;
            throw_errno("read", path_);
        }
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
        room = out.capacity() - out.size();
    }
    // Read without a size to go by (a pipe, /proc), a small result gives back the room it was
    // read into.
    if (out.size() < read_capacity() && out.capacity() - out.size() > out.size()) {
        out.shrink_to_fit();
    }
}

std::string file::read(std::size_t n) {
    require_open("read");
    begin_reading();
    std::string out;
    const auto buffered = static_cast<std::size_t>(get_end_ - get_);
    out.assign(get_, std::min(n, buffered));
    get_ += out.size();
    std::size_t remaining = n - out.size();
    if (remaining >= read_capacity()) {
        read_direct(out, remaining);
        return out;
    }
    while (remaining != 0 && fill() != 0) {
        const std::size_t take = std::min(remaining, static_cast<std::size_t>(get_end_ - get_));
        out.append(get_, take);
        get_ += take;
        remaining -= take;
    }
    return out;
}

std::size_t file::read(std::span<std::byte> into) {
    require_open("read");
    begin_reading();
    char* const out = reinterpret_cast<char*>(into.data());
    std::size_t done = take_buffered(out, into.size());
    while (done < into.size()) {
        const std::size_t remaining = into.size() - done;
        if (remaining >= read_capacity()) {
            const ssize_t n = retry([&] { return ::read(fd_, out + done, remaining); });
            if (n < 0) throw_errno("read", path_);
            if (n == 0) break;
            done += static_cast<std::size_t>(n);
        } else {
            if (fill() == 0) break;
            done += take_buffered(out + done, remaining);
        }
    }
    return done;
}

std::string file::read_all() {
    require_open("read_all");
    begin_reading();
    std::string out(get_, static_cast<std::size_t>(get_end_ - get_));
    get_ = get_end_ = nullptr;
    read_direct(out, std::numeric_limits<std::size_t>::max());
    return out;
}

std::string file::readline(std::size_t limit) {
    std::string line;
    read_line_into(line, limit);
    return line;
}

bool file::read_line_into(std::string& line, std::size_t limit) {
    require_open("readline");
    begin_reading();
    line.clear();
    while (line.size() < limit) {
        if (get_ == get_end_ && fill() == 0) break;
        const std::size_t available =
            std::min(static_cast<std::size_t>(get_end_ - get_), limit - line.size());
        if (const void* newline = std::memchr(get_, '\n', available)) {
            const auto length =
                static_cast<std::size_t>(static_cast<const char*>(newline) - get_) + 1;
            line.append(get_, length);
            get_ += length;
            return true;
        }
        line.append(get_, available);
        get_ += available;
    }
    return !line.empty();
}

// --- file: position -------------------------------------------------------------------------

std::uint64_t file::seek(std::int64_t offset, std::ios_base::seekdir from) {
    require_open("seek");
    const int whence = from == std::ios_base::beg   ? SEEK_SET
                       : from == std::ios_base::cur ? SEEK_CUR
                                                    : SEEK_END;
    if (put_end_ != nullptr) flush();
    // The descriptor is ahead of the file's position by the read-ahead.
    if (whence == SEEK_CUR) offset -= get_end_ - get_;
    const off_t position = ::lseek(fd_, static_cast<off_t>(offset), whence);
    if (position < 0) throw_errno("seek", path_);
    get_ = get_end_ = nullptr;
    return static_cast<std::uint64_t>(position);
}

std::uint64_t file::tell() {
    require_open("tell");
    const off_t position = ::lseek(fd_, 0, SEEK_CUR);
    if (position < 0) throw_errno("tell", path_);
    if (put_end_ != nullptr) return static_cast<std::uint64_t>(position + (put_ - buffer_.get()));
    return static_cast<std::uint64_t>(position - (get_end_ - get_));
}

std::uint64_t file::truncate() {
    return truncate(tell());
}

std::uint64_t file::truncate(std::uint64_t size) {
    require_open("truncate");
    if (!writable_) throw io_error("truncate", path_.string(), EBADF, "not writable");
    if (size > static_cast<std::uint64_t>(std::numeric_limits<off_t>::max())) {
        throw io_error("truncate", path_.string(), EFBIG);
    }
    if (put_end_ != nullptr) flush();
    drop_read_ahead();  // it may hold bytes past the new end
    if (retry([&] { return ::ftruncate(fd_, static_cast<off_t>(size)); }) != 0) {
        throw_errno("truncate", path_);
    }
    return size;
}

// --- atomic_write ---------------------------------------------------------------------------

atomic_write::atomic_write(fs::path path, open_options options, std::source_location where)
    : target_(std::move(path)), tracked_("atomic write", quoted(target_), where) {
    name_ = target_.filename().string();
    if (name_.empty() || name_ == "." || name_ == "..") {
        throw io_error("atomic write", target_.string(), EISDIR);
    }
    directory_ = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
    directory_fd_ =
        retry([&] { return ::open(directory_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
    if (directory_fd_ < 0) throw_errno("open directory", directory_);
    try {
        create_temporary(options);
    } catch (...) {
        static_cast<void>(release_temporary());
        throw;
    }
    state_ = state::open;
}

void atomic_write::create_temporary(const open_options& options) {
    struct stat status {};
    bool replacing = false;
    if (::fstatat(directory_fd_, name_.c_str(), &status, 0) == 0) {
        if (S_ISDIR(status.st_mode)) throw io_error("atomic write", target_.string(), EISDIR);
        replacing = true;
    } else if (errno != ENOENT) {
        throw_errno("stat", target_);
    }
    // A replacement is made private and given the target's bits below, exactly (the umask
    // does not apply to fchmod); a new file gets the requested bits less the umask.
    const auto mode =
        replacing ? mode_t{0600} : static_cast<mode_t>(options.permissions & fs::perms::mask);
    file_ = file(target_, options, true, true);
    int fd = -1;
    if (unnamed_files_can_be_linked()) {
        fd = retry(
            [&] { return ::openat(directory_fd_, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, mode); });
        // EISDIR: the kernel has no O_TMPFILE; EOPNOTSUPP: the file system has none.
        if (fd < 0 && errno != EISDIR && errno != EOPNOTSUPP) {
            throw_errno("create a temporary file in", directory_);
        }
    }
    if (fd < 0) {
        fd = create_unique("." + name_ + '.', ".tmp", temporary_name_, [&](const char* name) {
            return ::openat(directory_fd_, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        });
        if (fd < 0) throw_errno("create a temporary file in", directory_);
    }
    file_.fd_ = fd;
    if (replacing && ::fchmod(fd, status.st_mode & 07777) != 0) {
        throw_errno("chmod", target_);
    }
}

atomic_write::atomic_write(atomic_write&& other) noexcept {
    take(other);
}

atomic_write& atomic_write::operator=(atomic_write&& other) {
    if (this != &other) {
        discard();
        take(other);
    }
    return *this;
}

void atomic_write::take(atomic_write& other) noexcept {
    target_ = std::move(other.target_);
    directory_ = std::move(other.directory_);
    name_ = std::move(other.name_);
    temporary_name_ = std::move(other.temporary_name_);
    other.temporary_name_.clear();
    directory_fd_ = std::exchange(other.directory_fd_, -1);
    state_ = std::exchange(other.state_, state::discarded);
    file_.take(other.file_);  // file_ is closed here: after discard(), or never opened
    tracked_ = std::move(other.tracked_);
}

atomic_write::~atomic_write() {
    if (state_ != state::open) return;
    release_in_destructor([&] { discard(); }, [&] { return described("atomic write", target_); },
                          "atomic write", "discard in destructor");
}

file& atomic_write::enter() {
    if (state_ != state::open) {
        throw closed_error("enter: atomic write of " + quoted(target_) + " is " +
                           (state_ == state::committed ? "committed" : "discarded"));
    }
    return file_;
}

void atomic_write::exit(const std::exception_ptr& e) {
    if (e) {
        discard_chained(e);
    } else {
        commit();
    }
}

int atomic_write::release_temporary() noexcept {
    // The bytes are being thrown away: a failing close of their descriptor loses nothing.
    static_cast<void>(file_.close_descriptor());
    int error = 0;
    if (!temporary_name_.empty() && ::unlinkat(directory_fd_, temporary_name_.c_str(), 0) != 0 &&
        errno != ENOENT) {
        error = errno;
    }
    if (directory_fd_ >= 0) static_cast<void>(close_once(std::exchange(directory_fd_, -1)));
    state_ = state::discarded;
    tracked_.release();
    return error;
}

void atomic_write::fail(std::string_view operation, int error_number) {
    const fs::path temporary = directory_ / temporary_name_;
    const int remove_error = release_temporary();
    failure_chain failures(nullptr);
    add_failure(failures, operation, target_, error_number);
    add_failure(failures, "remove", temporary, remove_error);
    failures.rethrow();  // error_number is not 0
}

void atomic_write::discard() {
    discard_chained(nullptr);
}

void atomic_write::discard_chained(const std::exception_ptr& pending) {
    if (state_ != state::open) return;
    const fs::path temporary = directory_ / temporary_name_;
    const int remove_error = release_temporary();
    failure_chain failures(pending);
    add_failure(failures, "remove", temporary, remove_error);
    failures.throw_if_failed();
}

void atomic_write::commit() {
    if (state_ == state::committed) return;
    if (state_ == state::discarded) {
        throw closed_error("commit: atomic write of " + quoted(target_) + " was discarded");
    }
    if (file_.closed()) {
        static_cast<void>(release_temporary());
        throw closed_error("commit: the file of atomic write " + quoted(target_) +
                           " was closed before the commit; the target is untouched");
    }
    const int fd = file_.fd_;
    if (const int error = file_.flush_pending(); error != 0) fail("write", error);
    // Never retried, never followed by the rename: after a failed fsync the kernel may have
    // dropped the pages, and a second fsync could succeed with the data gone.
    if (retry([&] { return ::fsync(fd); }) != 0) fail("fsync", errno);
    if (temporary_name_.empty()) {
        const std::string descriptor = "/proc/self/fd/" + std::to_string(fd);
        if (create_unique("." + name_ + '.', ".tmp", temporary_name_, [&](const char* name) {
                return ::linkat(AT_FDCWD, descriptor.c_str(), directory_fd_, name,
                                AT_SYMLINK_FOLLOW);
            }) < 0) {
            fail("link", errno);
        }
    }
    // Closed before the rename: NFS and FUSE report write errors at close.
    if (const int error = file_.close_descriptor(); error != 0) fail("close", error);
    if (::renameat(directory_fd_, temporary_name_.c_str(), directory_fd_, name_.c_str()) != 0) {
        fail("rename", errno);
    }
    temporary_name_.clear();
    state_ = state::committed;
    // The rename is done and cannot be undone; a failure from here on says that the new
    // contents may not survive a crash.
    const int sync_error = retry([&] { return ::fsync(directory_fd_); }) == 0 ? 0 : errno;
    const int close_error = close_once(std::exchange(directory_fd_, -1));
    tracked_.release();
    failure_chain failures(nullptr);
    add_failure(failures, "fsync directory", directory_, sync_error);
    add_failure(failures, "close directory", directory_, close_error);
    failures.throw_if_failed();
}

// --- temporary_directory --------------------------------------------------------------------

temporary_directory::temporary_directory(std::string_view prefix, std::source_location where)
    : tracked_("temporary directory", std::string(), where) {
    check_prefix(prefix, "temporary_directory");
    const fs::path parent = temporary_directory_path();
    fs::path path;
    if (create_unique((parent / prefix).native(), "", path,
                      [](const char* name) { return ::mkdir(name, 0700); }) < 0) {
        throw_errno("create a directory in", parent);
    }
    path_ = std::move(path);
    live_ = true;
    try {
        tracked_.describe(quoted(path_));
    } catch (...) {
        ::rmdir(path_.c_str());
        live_ = false;
        throw;
    }
}

temporary_directory::temporary_directory(temporary_directory&& other) noexcept
    : path_(std::move(other.path_)),
      live_(std::exchange(other.live_, false)),
      tracked_(std::move(other.tracked_)) {
}

temporary_directory& temporary_directory::operator=(temporary_directory&& other) {
    if (this != &other) {
        remove();
        path_ = std::move(other.path_);
        live_ = std::exchange(other.live_, false);
        tracked_ = std::move(other.tracked_);
    }
    return *this;
}

temporary_directory::~temporary_directory() {
    if (!live_) return;
    release_in_destructor([&] { remove(); },
                          [&] { return described("temporary directory", path_); },
                          "temporary directory", "remove in destructor");
}

const fs::path& temporary_directory::enter() {
    if (!live_) throw closed_error("enter: temporary directory " + quoted(path_) + " is removed");
    return path_;
}

void temporary_directory::exit(const std::exception_ptr& e) {
    remove_chained(e);
}

void temporary_directory::remove() {
    remove_chained(nullptr);
}

void temporary_directory::remove_chained(const std::exception_ptr& pending) {
    if (!live_) return;
    // Removed once: a tree that could not be removed is reported, not tried again.
    live_ = false;
    const int error = remove_tree(path_);
    tracked_.release();
    failure_chain failures(pending);
    add_failure(failures, "remove", path_, error);
    failures.throw_if_failed();
}

}  // namespace ctxmgr
