// file_lock: open-file-description locks on a lock file (see file_lock.hpp).
#include "ctxmgr/file_lock.hpp"
#include "ctxmgr/release.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include "ctxmgr/detail/deadline.hpp"
#include "ctxmgr/errors.hpp"
#include "ctxmgr/lock.hpp"
#include "ctxmgr/unraisable.hpp"
#include "support/posix_support.hpp"
#include "support/threads.hpp"

namespace ctxmgr {

namespace {

using detail::quoted;

using std::chrono::steady_clock;

// The polling backoff of a timed wait.
constexpr std::chrono::microseconds first_backoff(100);
constexpr std::chrono::milliseconds longest_backoff(10);

// fcntl's lock request for the whole file: l_start 0, l_len 0 (to the end, however long it
// grows), l_pid 0 as F_OFD_* require.
struct flock whole_file(short type) noexcept {
    struct flock request {};
    request.l_type = type;
    request.l_whence = SEEK_SET;
    return request;
}

// A file_lock compares the fork generation at release with the one at enter to tell whether it
// runs in a child of the process that locked (getpid() would cost two system calls, 200 ns,
// per lock). An atfork handler counts, since fork() and every other way for a child to run
// C++ code (posix_spawn and vfork children exec or _exit at once) pass through it.
using detail::fork_generation;

#if CTXMGR_LOCK_ORDER_CHECK
// The checker's view of a file lock: the canonical path (the file exists once opened), so
// that two spellings of one file are one lock.
detail::lock_ref order_ref(const std::filesystem::path& path, lock_mode mode, bool timed,
                           const void*& key) {
    if (key == nullptr) {
        std::error_code error;
        auto canonical = std::filesystem::canonical(path, error);
        if (error) canonical = std::filesystem::absolute(path, error).lexically_normal();
        if (error) canonical = path;
        key = detail::lock_order_file_key("file lock " + quoted(canonical));
    }
    // A second hold of the same file by the same thread waits for ever unless both are shared;
    // with a timeout it only times out.
    return {key, nullptr, timed ? detail::reentry::allowed : detail::reentry::shared_only,
            mode == lock_mode::shared};
}
#endif

}  // namespace

const char* to_string(lock_mode mode) noexcept {
    switch (mode) {
        case lock_mode::exclusive:
            return "exclusive";
        case lock_mode::shared:
            return "shared";
    }
    return "invalid";
}

file_lock::file_lock(std::filesystem::path path, lock_mode mode,
                     std::optional<std::chrono::nanoseconds> timeout, std::source_location where)
    : path_(std::move(path)), timeout_(timeout), check_(where), mode_(mode) {
    if (mode != lock_mode::exclusive && mode != lock_mode::shared) {
        throw std::invalid_argument("file_lock " + quoted(path_) + ": invalid lock_mode " +
                                    std::to_string(static_cast<int>(mode)) +
                                    " (neither exclusive nor shared)");
    }
}

file_lock::file_lock(file_lock&& other) noexcept
    : path_(std::move(other.path_)),
      timeout_(other.timeout_),
      check_(std::move(other.check_)),
      fd_(std::exchange(other.fd_, -1)),
      owner_(other.owner_),
      order_key_(other.order_key_),
      mode_(other.mode_),
      tracked_(std::move(other.tracked_)) {
}

file_lock& file_lock::operator=(file_lock&& other) {
    if (this != &other) {
        release();
        path_ = std::move(other.path_);
        timeout_ = other.timeout_;
        check_ = std::move(other.check_);
        fd_ = std::exchange(other.fd_, -1);
        owner_ = other.owner_;
        order_key_ = other.order_key_;
        mode_ = other.mode_;
        tracked_ = std::move(other.tracked_);
    }
    return *this;
}

file_lock::~file_lock() {
    release_in_destructor([&] { release(); }, [&] { return "file lock " + description(); },
                          "file lock", "release in destructor");
}

std::string file_lock::description() const {
    return quoted(path_) + ' ' + to_string(mode_);
}

file_lock& file_lock::enter() {
    check_.entered();
    if (held()) {
        throw protocol_error("file lock " + description() +
                             ": entered again while this object holds it (a file_lock is not "
                             "reentrant)");
    }
    const auto start = steady_clock::now();
    // O_NONBLOCK: opening a FIFO by mistake must not wait for a writer (it is refused below).
    // It does not affect regular files or fcntl locks. O_CREAT refuses directories (EISDIR).
    // The access mode is the least each lock needs.
    const int flags = O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
                      (mode_ == lock_mode::exclusive ? O_WRONLY : O_RDONLY);
    [[maybe_unused]] bool checked_order = false;  // by the lock-order checker, once
    for (;;) {
        const int fd = detail::retry([&] { return ::open(path_.c_str(), flags, 0666); });
        if (fd < 0) detail::throw_errno("open lock file", path_);
        try {
#if CTXMGR_LOCK_ORDER_CHECK
            if (!checked_order) {
                const auto ref = order_ref(path_, mode_, timeout_.has_value(), order_key_);
                detail::order_before(&ref, 1, check_.where());
            }
#endif
            checked_order = true;
            lock_descriptor(fd, start);
            struct stat status {};
            if (::fstat(fd, &status) != 0) detail::throw_errno("stat lock file", path_);
            if (!S_ISREG(status.st_mode)) {
                throw io_error("open lock file (not a regular file)", path_.string(), EINVAL);
            }
            if (status.st_nlink == 0) {
                // Someone deleted the file while this waited: the lock is on a file nobody
                // else will open. Lock what the path names now (Python's filelock, again).
                ::close(fd);
                continue;
            }
            // Closing the descriptor, below, drops the lock if registering fails.
            tracked_ = tracked("file lock", description(), check_.where());
        } catch (...) {
            ::close(fd);
            throw;
        }
        fd_ = fd;
        break;
    }
    owner_ = fork_generation();
#if CTXMGR_LOCK_ORDER_CHECK
    const auto ref = order_ref(path_, mode_, timeout_.has_value(), order_key_);
    detail::order_acquired(&ref, 1, check_.where());
#endif
    return *this;
}

void file_lock::lock_descriptor(int fd, steady_clock::time_point start) {
    struct flock request = whole_file(mode_ == lock_mode::exclusive ? F_WRLCK : F_RDLCK);
    auto fail = [&](int error) {
        throw io_error(std::string("lock (") + to_string(mode_) + ')', path_.string(), error);
    };
    if (!timeout_) {
        if (detail::retry([&] { return ::fcntl(fd, F_OFD_SETLKW, &request); }) != 0) fail(errno);
        return;
    }
    const auto limit = detail::deadline::after(*timeout_, start);
    std::chrono::nanoseconds backoff = first_backoff;
    for (;;) {
        if (::fcntl(fd, F_OFD_SETLK, &request) == 0) return;
        if (errno != EAGAIN && errno != EACCES && errno != EINTR) fail(errno);
        const auto now = steady_clock::now();
        if (limit.expired(now)) {
            throw timeout_error(std::string(to_string(mode_)) + " file lock " + quoted(path_),
                                now - start);
        }
        std::this_thread::sleep_for(
            std::min<std::chrono::nanoseconds>(backoff, limit.remaining(now)));
        backoff = std::min<std::chrono::nanoseconds>(backoff * 2, longest_backoff);
    }
}

void file_lock::release() {
    if (!held()) return;
    const int fd = std::exchange(fd_, -1);
    tracked_.release();
    release_order();
    int error = 0;
    const char* operation = nullptr;
    // A child of fork() shares the parent's description: unlocking it there would release
    // the parent's lock, so a copy in another process only closes its descriptor.
    if (owner_ == fork_generation()) {
        struct flock request = whole_file(F_UNLCK);
        if (::fcntl(fd, F_OFD_SETLK, &request) != 0) {
            error = errno;
            operation = "unlock";
        }
    }
    if (const int close_error = detail::close_once(fd); close_error != 0 && error == 0) {
        error = close_error;
        operation = "close lock file";
    }
    if (error != 0) throw io_error(operation, path_.string(), error);
}

void file_lock::release_order() noexcept {
#if CTXMGR_LOCK_ORDER_CHECK
    if (order_key_ == nullptr) return;
    const detail::lock_ref ref{order_key_, nullptr, detail::reentry::allowed,
                               mode_ == lock_mode::shared};
    detail::order_released(&ref, 1);
#endif
}

void file_lock::exit(const std::exception_ptr& e) {
    release_on_exit(e, [&] { release(); });
}

}  // namespace ctxmgr
