// ctxmgr/file_lock.hpp: a lock that processes share, through a lock file.
//
// file_lock(path) is an advisory lock on the file at `path`, held from enter() to exit() (or
// release()): exclusive (one holder) or shared (any number of holders, no exclusive one).
// It is a Linux open-file-description lock (fcntl F_OFD_SETLK / F_OFD_SETLKW), so
//   - it excludes other processes, other threads, and other file_lock objects of the same
//     thread alike: each file_lock opens the file itself and has its own description;
//   - the kernel drops it when the holder dies, even by SIGKILL: no stale lock to clean up;
//   - opening and closing the same file elsewhere in the process does not release it (the
//     trap of classic POSIX record locks, which any close() of the file drops).
// The lock file is created if missing (mode 0666 less the umask, O_CLOEXEC) and never
// deleted: deleting it would let one process lock the old file while another creates and
// locks a new one (the bug Python's filelock package fixed twice). Should something else
// delete it while a process waits, the waiter notices (no links left) once it has the lock
// and locks the file the path names then.
//
//   ctxmgr::with(ctxmgr::file_lock("/tmp/app.lock"), [] { /* only one process here */ });
//   ctxmgr::with(ctxmgr::file_lock("/tmp/app.lock", ctxmgr::lock_mode::shared,
//                                  std::chrono::seconds(2)),
//                [](ctxmgr::file_lock& held) { /* readers together */ });
//
// Waiting: with no timeout, enter() blocks in F_OFD_SETLKW until the lock is free. With one,
// it polls F_OFD_SETLK with a backoff from 100 us doubling to 10 ms, against a steady-clock
// deadline, so a jump of the wall clock neither ends nor prolongs the wait; it notices a
// release within 10 ms. (A blocking fcntl cannot be given a timeout without a signal, and a
// library must not touch the process's signal dispositions.) A timeout <= 0 tries once.
// Neither way is fair: a waiter may be overtaken.
//
// Guarantees:
//   - enter() throws timeout_error (`exclusive file lock "/tmp/app.lock"`, and how long it
//     waited), io_error with the errno and the path (the file cannot be created or opened,
//     is a directory or not a regular file, or fcntl fails), or protocol_error (this object already
//     holds the lock: a file_lock is not reentrant). After any failure nothing is held and no
//     descriptor is left open.
//   - release() is idempotent and throws io_error when unlocking or closing fails (the lock
//     is released even then); exit(e) throws it too, chained to a pending `e`
//     (std::throw_with_nested). The destructor releases and sends a failure to the
//     unraisable hook.
//   - While held, the lock is registered with the leak tracker (kind "file lock",
//     description the quoted path and the mode). With the lock-order checker on (lock.hpp),
//     file locks take part in it, identified by their canonical path.
//   - After fork() the child shares a lock held by the parent (one open file description):
//     the child's copy releases only its descriptor, never the parent's lock, and the lock
//     lasts until both have closed it or the parent releases it.
//   - Thread-compatible: one object is used by one thread at a time (it may be moved to and
//     released on another); threads and processes share the file, not the object.
#pragma once

#include <chrono>
#include <exception>
#include <filesystem>
#include <optional>
#include <source_location>
#include <string>

#include "detail/entry_check.hpp"
#include "tracking.hpp"

namespace ctxmgr {

// How a file_lock holds its file.
enum class lock_mode : unsigned char {
    exclusive,  // one holder, no shared ones: writers
    shared,     // any number of shared holders, no exclusive one: readers
};

// "exclusive" or "shared".
[[nodiscard]] const char* to_string(lock_mode mode) noexcept;

// An advisory lock on a file, for processes and threads (see the top of this header).
// Members not marked noexcept may throw; what, each says.
class [[nodiscard]] file_lock {
  public:
    // Remembers what to lock; touches nothing on disk. `timeout`: none waits for ever.
    // Throws std::invalid_argument for a mode that is neither exclusive nor shared.
    explicit file_lock(std::filesystem::path path, lock_mode mode = lock_mode::exclusive,
                       std::optional<std::chrono::nanoseconds> timeout = std::nullopt,
                       std::source_location where = std::source_location::current());

    // Takes over the lock, if held; `other` is left released.
    file_lock(file_lock&& other) noexcept;
    // Releases this one's lock first, which may fail: then it throws io_error and `other`
    // is unchanged. Hence not noexcept.
    file_lock& operator=(file_lock&& other);
    file_lock(const file_lock&) = delete;
    file_lock& operator=(const file_lock&) = delete;
    ~file_lock();

    // Creates the file if missing, opens it and locks it; returns *this. Throws
    // timeout_error, io_error, protocol_error (see the top of this header).
    file_lock& enter();

    // release(); a failure is chained to a pending exception.
    void exit(const std::exception_ptr& e);

    // Unlocks and closes the file, if held. Idempotent. Throws io_error on failure, after
    // which the lock is released all the same (closing the description drops it).
    void release();

    [[nodiscard]] bool held() const noexcept { return fd_ >= 0; }
    // The resources' common query: true when nothing is held (before enter(), after release).
    [[nodiscard]] bool closed() const noexcept { return fd_ < 0; }
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    [[nodiscard]] lock_mode mode() const noexcept { return mode_; }
    [[nodiscard]] std::optional<std::chrono::nanoseconds> timeout() const noexcept {
        return timeout_;
    }

  private:
    [[nodiscard]] std::string description() const;
    void lock_descriptor(int fd, std::chrono::steady_clock::time_point start);
    void release_order() noexcept;

    std::filesystem::path path_;
    std::optional<std::chrono::nanoseconds> timeout_;
    [[no_unique_address]] detail::entry_check<"file_lock"> check_;
    int fd_ = -1;
    unsigned owner_ = 0;               // the fork generation that locked: see release()
    const void* order_key_ = nullptr;  // the lock-order checker's key, when it is on
    lock_mode mode_;
    [[no_unique_address]] tracked tracked_;
};

}  // namespace ctxmgr
