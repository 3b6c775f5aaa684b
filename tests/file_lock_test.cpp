#include <ctxmgr/file_lock.hpp>
#include <ctxmgr/lock.hpp>
#include <ctxmgr/tracking.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <future>
#include <optional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "recording.hpp"
#include "resource_check.hpp"

namespace {

using namespace std::chrono_literals;
using ctxmgr::lock_mode;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::test_error;

using ctxmgr::testing::contains;

// Every test works in a fresh directory, removed at the end.
class FileLock : public ::testing::Test {
  protected:
    void SetUp() override {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "file_lock_test.XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        directory_ = pattern;
        path_ = directory_ / "app.lock";
    }
    void TearDown() override {
        std::error_code ignored;
        std::filesystem::remove_all(directory_, ignored);
    }

    std::filesystem::path directory_;
    std::filesystem::path path_;
};

// Whether another open file description can take the lock now: a fresh descriptor, F_OFD_SETLK,
// closed again. Works in any process.
bool lockable_now(const std::filesystem::path& path, short type = F_WRLCK) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return false;
    struct flock request {};
    request.l_type = type;
    request.l_whence = SEEK_SET;
    const bool ok = ::fcntl(fd, F_OFD_SETLK, &request) == 0;
    ::close(fd);
    return ok;
}

// Runs `child` in a forked process and returns its exit status (the child _exits with what
// `child` returns, never running the parent's atexit handlers or destructors).
template <class F>
int in_child(F&& child) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        int code = 99;
        try {
            code = child();
        } catch (...) {
            code = 98;
        }
        ::_exit(code);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The descriptors this process has open on `path`.
std::vector<int> descriptors_for(const std::filesystem::path& path) {
    const auto wanted = std::filesystem::canonical(path).string();
    std::vector<int> found;
    for (const auto& [fd, target] : ctxmgr::testing::open_descriptors()) {
        if (target == wanted) found.push_back(fd);
    }
    return found;
}

// The descriptor this process has open on `path`, or -1.
int descriptor_for(const std::filesystem::path& path) {
    const auto found = descriptors_for(path);
    return found.empty() ? -1 : found.front();
}

// --- the type -------------------------------------------------------------------------------

TEST_F(FileLock, TypeIsDecidedOnPurpose) {
    static_assert(ctxmgr::context_manager<ctxmgr::file_lock>);
    static_assert(std::is_same_v<ctxmgr::enter_result_t<ctxmgr::file_lock>, ctxmgr::file_lock&>);
    static_assert(!ctxmgr::can_suppress_v<ctxmgr::file_lock>);
    static_assert(std::is_nothrow_move_constructible_v<ctxmgr::file_lock>);
    static_assert(!std::is_nothrow_move_assignable_v<ctxmgr::file_lock>, "releasing may fail");
    static_assert(!std::is_copy_constructible_v<ctxmgr::file_lock>);
    static_assert(!std::is_convertible_v<std::filesystem::path, ctxmgr::file_lock>, "explicit");
    ctxmgr::file_lock lock(path_, lock_mode::shared, 2s);
    EXPECT_EQ(lock.path(), path_);
    EXPECT_EQ(lock.mode(), lock_mode::shared);
    EXPECT_EQ(lock.timeout(), std::optional<std::chrono::nanoseconds>(2s));
    EXPECT_FALSE(lock.held());
    EXPECT_FALSE(std::filesystem::exists(path_)) << "constructing touches nothing on disk";
    EXPECT_STREQ(ctxmgr::to_string(lock_mode::exclusive), "exclusive");
    EXPECT_STREQ(ctxmgr::to_string(lock_mode::shared), "shared");
    ctxmgr::with(lock, [] {});  // a manager made and never entered would report
}

TEST_F(FileLock, HeaderExampleRuns) {
    int inside = 0;
    ctxmgr::with(ctxmgr::file_lock(path_), [&] { ++inside; });
    ctxmgr::with(ctxmgr::file_lock(path_, ctxmgr::lock_mode::shared, std::chrono::seconds(2)),
                 [&](ctxmgr::file_lock& held) {
                     EXPECT_TRUE(held.held());
                     ++inside;
                 });
    EXPECT_EQ(inside, 2);
}

TEST_F(FileLock, AnInvalidModeIsATypedErrorNamingIt) {
    try {
        ctxmgr::file_lock lock(path_, static_cast<lock_mode>(7));
        ADD_FAILURE() << "no exception";
    } catch (const std::invalid_argument& e) {
        EXPECT_TRUE(contains(e.what(), "invalid lock_mode 7")) << e.what();
        EXPECT_TRUE(contains(e.what(), path_.string())) << e.what();
    }
}

// --- the lock file ---------------------------------------------------------------------------

TEST_F(FileLock, CreatesTheFileWithTheUmaskAndNeverDeletesIt) {
    const mode_t previous = ::umask(027);
    ctxmgr::with(ctxmgr::file_lock(path_), [&] { EXPECT_TRUE(std::filesystem::exists(path_)); });
    ::umask(previous);
    ASSERT_TRUE(std::filesystem::exists(path_)) << "deleting it would break mutual exclusion";
    struct stat status {};
    ASSERT_EQ(::stat(path_.c_str(), &status), 0);
    EXPECT_EQ(status.st_mode & 0777, 0640u) << "0666 less the umask";
    // The descriptor is close-on-exec while held.
    ctxmgr::with(ctxmgr::file_lock(path_), [&] {
        const int fd = descriptor_for(path_);
        ASSERT_GE(fd, 0);
        EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    });
}

TEST_F(FileLock, AnExistingFileIsLockedAsItIs) {
    ASSERT_EQ(::close(::open(path_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644)), 0);
    {
        std::FILE* f = std::fopen(path_.c_str(), "w");
        std::fputs("12345\n", f);
        std::fclose(f);
    }
    ctxmgr::with(ctxmgr::file_lock(path_), [] {});
    EXPECT_EQ(std::filesystem::file_size(path_), 6u) << "the contents are left alone";
}

TEST_F(FileLock, OpenErrorsAreIoErrorsWithTheErrnoAndThePath) {
    const auto missing_dir = directory_ / "no" / "such" / "dir.lock";
    const auto e = exception_from([&] { ctxmgr::with(ctxmgr::file_lock(missing_dir), [] {}); });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::io_error>(e));
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::io_error& error) {
        EXPECT_EQ(error.code(), std::errc::no_such_file_or_directory);
        EXPECT_EQ(error.path(), missing_dir.string());
        EXPECT_TRUE(contains(error.what(), "open lock file \"" + missing_dir.string() + '"'))
            << error.what();
    }
    for (const auto mode : {lock_mode::exclusive, lock_mode::shared}) {
        try {
            ctxmgr::with(ctxmgr::file_lock(directory_, mode), [] {});
            ADD_FAILURE() << "a directory was locked";
        } catch (const ctxmgr::io_error& error) {
            EXPECT_EQ(error.code(), std::errc::is_a_directory) << error.what();
        }
    }
    const auto fifo = directory_ / "fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    try {
        ctxmgr::with(ctxmgr::file_lock(fifo, lock_mode::shared), [] {});
        ADD_FAILURE() << "a FIFO was locked (or the open waited for a writer)";
    } catch (const ctxmgr::io_error& error) {
        EXPECT_EQ(error.code(), std::errc::invalid_argument) << error.what();
        EXPECT_TRUE(contains(error.what(), "not a regular file")) << error.what();
    }
}

TEST_F(FileLock, AReadOnlyFileTakesSharedLocksOnly) {
    ASSERT_EQ(::close(::open(path_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0444)), 0);
    ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared), [] {});
    if (::geteuid() == 0) GTEST_SKIP() << "root may open a read-only file for writing";
    try {
        ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive), [] {});
        ADD_FAILURE() << "no exception";
    } catch (const ctxmgr::io_error& error) {
        EXPECT_EQ(error.code(), std::errc::permission_denied) << error.what();
    }
}

// --- exclusion ----------------------------------------------------------------------------

TEST_F(FileLock, ASecondObjectInTheSameThreadTimesOutWithTheExactType) {
    ctxmgr::file_lock first(path_);
    first.enter();
    ctxmgr::file_lock second(path_, lock_mode::exclusive, 30ms);
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] { second.enter(); });
    const auto elapsed = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(e);
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::timeout_error& error) {
        EXPECT_EQ(typeid(error), typeid(ctxmgr::timeout_error));
        EXPECT_GE(error.waited(), 30ms);
        EXPECT_TRUE(
            contains(error.what(), "waiting for exclusive file lock \"" + path_.string() + '"'))
            << error.what();
    }
    EXPECT_GE(elapsed, 30ms);
    EXPECT_FALSE(second.held());
    EXPECT_TRUE(first.held());
    first.release();
    EXPECT_TRUE(lockable_now(path_)) << "nothing stays locked after a timeout";
    second.enter();
    EXPECT_FALSE(lockable_now(path_));
    second.release();
}

TEST_F(FileLock, ZeroAndNegativeTimeoutsTryOnce) {
    ctxmgr::with(ctxmgr::file_lock(path_), [&] {
        const auto start = std::chrono::steady_clock::now();
        EXPECT_THROW(ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared, 0s), [] {}),
                     ctxmgr::timeout_error);
        EXPECT_THROW(ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared, -1s), [] {}),
                     ctxmgr::timeout_error);
        EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    });
    ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared, 0s), [] {});
}

TEST_F(FileLock, SharedWithSharedButNotWithExclusive) {
    ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared), [&] {
        ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared, 0s), [&] {
            EXPECT_TRUE(lockable_now(path_, F_RDLCK));
            EXPECT_FALSE(lockable_now(path_, F_WRLCK));
            EXPECT_THROW(ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive, 20ms), [] {}),
                         ctxmgr::timeout_error);
        });
    });
    ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive), [&] {
        EXPECT_FALSE(lockable_now(path_, F_RDLCK));
        const auto e = exception_from(
            [&] { ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared, 20ms), [] {}); });
        ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e));
        EXPECT_TRUE(contains(ctxmgr::describe(e), "waiting for shared file lock"))
            << ctxmgr::describe(e);
    });
}

TEST_F(FileLock, ClosingAnotherDescriptorOfTheFileDoesNotReleaseIt) {
    ctxmgr::with(ctxmgr::file_lock(path_), [&] {
        // The classic POSIX record-lock trap: any close() of the file drops the process's locks.
        const int other = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
        ASSERT_GE(other, 0);
        ASSERT_EQ(::close(other), 0);
        EXPECT_FALSE(lockable_now(path_)) << "this process";
        const int status = in_child([&] { return lockable_now(path_) ? 1 : 0; });
        EXPECT_EQ(status, 0) << "another process could take the lock";
        EXPECT_THROW(ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive, 0s), [] {}),
                     ctxmgr::timeout_error);
    });
}

TEST_F(FileLock, ExcludesAnotherProcessAndIsFreeAfterRelease) {
    {
        ctxmgr::file_lock held(path_);
        held.enter();
        const int status = in_child([&] {
            try {
                ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive, 30ms), [] {});
                return 1;
            } catch (const ctxmgr::timeout_error&) {
                return 0;
            }
        });
        EXPECT_EQ(status, 0) << "the child got a lock this process holds";
        // The child's copy of `held` was never released there; and _exit closed its
        // descriptor without unlocking this process's lock.
        EXPECT_FALSE(lockable_now(path_));
    }
    const int status = in_child([&] {
        ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive, 5s), [] {});
        return 0;
    });
    EXPECT_EQ(status, 0) << "released in the parent, free for the child";
}

TEST_F(FileLock, AForkedChildThatReleasesItsCopyLeavesTheParentsLockAlone) {
    ctxmgr::file_lock held(path_);
    held.enter();
    const int status = in_child([&] {
        held.release();  // in the child: closes its descriptor only
        return lockable_now(path_) ? 1 : 0;
    });
    EXPECT_EQ(status, 0);
    EXPECT_FALSE(lockable_now(path_)) << "the parent still holds it";
    held.release();
    EXPECT_TRUE(lockable_now(path_));
}

TEST_F(FileLock, IsReleasedWhenTheHolderIsKilled) {
    int ready[2];
    ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::close(ready[0]);
        int code = 0;
        try {
            ctxmgr::file_lock held(path_);
            held.enter();
            const char byte = 'x';
            if (::write(ready[1], &byte, 1) != 1) code = 2;
            for (int i = 0; i < 600; ++i) ::sleep(1);  // until killed; bounded all the same
        } catch (...) {
            code = 3;
        }
        ::_exit(code);
    }
    ::close(ready[1]);
    char byte = 0;
    ASSERT_EQ(::read(ready[0], &byte, 1), 1);
    ::close(ready[0]);
    EXPECT_THROW(ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive, 20ms), [] {}),
                 ctxmgr::timeout_error);
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    bool acquired = false;
    ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive, 10s), [&] { acquired = true; });
    EXPECT_TRUE(acquired);
    EXPECT_TRUE(std::filesystem::exists(path_));
}

TEST_F(FileLock, AWaiterDoesNotKeepALockOnAFileDeletedMeanwhile) {
    ctxmgr::file_lock first(path_);
    first.enter();
    std::promise<void> holding;
    std::promise<void> done;
    std::thread waiter([&] {
        ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive, 60s), [&] {
            holding.set_value();
            done.get_future().wait();
        });
    });
    // Once the waiter has the old file open, delete it (as a careless cleaner would), then
    // release: the waiter's lock on the deleted file would exclude no one.
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (descriptors_for(path_).size() < 2 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
    }
    ASSERT_EQ(descriptors_for(path_).size(), 2u);
    ASSERT_EQ(::unlink(path_.c_str()), 0);
    first.release();
    holding.get_future().wait();
    EXPECT_TRUE(std::filesystem::exists(path_)) << "the waiter created the file again";
    EXPECT_FALSE(lockable_now(path_)) << "and holds the lock on the file the path names";
    done.set_value();
    waiter.join();
    EXPECT_TRUE(lockable_now(path_));
}

TEST_F(FileLock, ExcludesOtherThreadsAndWakesWaiters) {
    std::atomic<int> inside{0};
    std::atomic<int> most{0};
    long counter = 0;
    auto work = [&](std::optional<std::chrono::nanoseconds> timeout) {
        for (int i = 0; i < 50; ++i) {
            ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::exclusive, timeout), [&] {
                const int now = ++inside;
                int seen = most.load();
                while (now > seen && !most.compare_exchange_weak(seen, now)) {
                }
                ++counter;
                std::this_thread::yield();
                --inside;
            });
        }
    };
    // One blocks in F_OFD_SETLKW, the other polls against a deadline.
    std::thread blocking(work, std::nullopt);
    std::thread polling(work, std::optional<std::chrono::nanoseconds>(60s));
    blocking.join();
    polling.join();
    EXPECT_EQ(counter, 100);
    EXPECT_EQ(most.load(), 1);
}

TEST_F(FileLock, ATimedWaitSucceedsWhenTheHolderReleasesInTime) {
    ctxmgr::file_lock held(path_);
    held.enter();
    std::thread releaser([&] {
        std::this_thread::sleep_for(40ms);
        held.release();
    });
    const auto start = std::chrono::steady_clock::now();
    bool acquired = false;
    ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared, 30s), [&] { acquired = true; });
    const auto waited = std::chrono::steady_clock::now() - start;
    releaser.join();
    EXPECT_TRUE(acquired);
    EXPECT_GE(waited, 30ms);
}

// --- the protocol --------------------------------------------------------------------------

TEST_F(FileLock, EnteredTwiceIsAProtocolErrorAndKeepsTheLock) {
    ctxmgr::file_lock lock(path_);
    lock.enter();
    try {
        lock.enter();
        ADD_FAILURE() << "no exception";
    } catch (const ctxmgr::protocol_error& e) {
        EXPECT_TRUE(contains(e.what(), "file lock \"" + path_.string() + "\" exclusive"))
            << e.what();
        EXPECT_TRUE(contains(e.what(), "not reentrant")) << e.what();
    }
    EXPECT_TRUE(lock.held());
    EXPECT_FALSE(lockable_now(path_));
    lock.release();
}

TEST_F(FileLock, ReleaseIsIdempotentAndTheObjectCanLockAgain) {
    ctxmgr::file_lock lock(path_);
    lock.release();
    lock.enter();
    lock.release();
    lock.release();
    EXPECT_TRUE(lockable_now(path_));
    for (int i = 0; i < 3; ++i) ctxmgr::with(lock, [&] { EXPECT_FALSE(lockable_now(path_)); });
    EXPECT_TRUE(lockable_now(path_));
}

TEST_F(FileLock, TheBodysExceptionPropagatesAndTheLockIsReleased) {
    std::exception_ptr thrown;
    const auto caught = exception_from([&] {
        ctxmgr::with(ctxmgr::file_lock(path_), [&] { ctxmgr::testing::throw_recorded(thrown); });
    });
    ASSERT_TRUE(ctxmgr::holds<test_error>(caught));
    EXPECT_TRUE(lockable_now(path_));
}

TEST_F(FileLock, TheDestructorReleases) {
    {
        ctxmgr::file_lock lock(path_);
        lock.enter();
        EXPECT_FALSE(lockable_now(path_));
    }
    EXPECT_TRUE(lockable_now(path_));
}

TEST_F(FileLock, MovingTransfersTheLock) {
    ctxmgr::file_lock first(path_);
    first.enter();
    ctxmgr::file_lock second(std::move(first));
    EXPECT_FALSE(first.held());
    EXPECT_TRUE(second.held());
    first.release();
    EXPECT_FALSE(lockable_now(path_)) << "releasing the moved-from object released nothing";
    const auto other_path = directory_ / "other.lock";
    ctxmgr::file_lock third(other_path);
    third.enter();
    third = std::move(second);  // releases other.lock, takes app.lock
    EXPECT_TRUE(lockable_now(other_path));
    EXPECT_FALSE(lockable_now(path_));
    EXPECT_EQ(third.path(), path_);
    third.release();
    EXPECT_TRUE(lockable_now(path_));
}

TEST_F(FileLock, AHeldLockMayBeReleasedOnAnotherThread) {
    ctxmgr::file_lock lock(path_);
    lock.enter();
    std::thread([moved = std::move(lock)]() mutable { moved.release(); }).join();
    EXPECT_TRUE(lockable_now(path_));
}

// --- made but never entered -----------------------------------------------------------------

TEST_F(FileLock, MadeAndNeverEnteredReportsTheManagerItsLineAndHowToUseIt) {
    ctxmgr::testing::unraisable_log log;
    unsigned line = 0;
    {
        ctxmgr::file_lock lock(path_);  // the RAII habit: this locks nothing
        line = __LINE__ - 1;
        EXPECT_FALSE(std::filesystem::exists(path_)) << "nothing was even opened";
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(
        ctxmgr::testing::reports_never_entered(reports[0], "file_lock", "file_lock_test.cpp", line))
        << reports[0];
}

TEST_F(FileLock, EnteredOrMovedFromDoesNotReportAndAssigningOverAnUnenteredOneDoes) {
    ctxmgr::testing::unraisable_log log;
    ctxmgr::with(ctxmgr::file_lock(path_), [] {});
    {
        ctxmgr::file_lock held(path_);
        held.enter();
        // Entered, though enter() fails: it was used as a manager.
        ctxmgr::file_lock busy(path_, lock_mode::exclusive, 0ms);
        EXPECT_THROW(busy.enter(), ctxmgr::timeout_error);
        ctxmgr::file_lock moved(std::move(held));
    }
    EXPECT_TRUE(log.reports().empty()) << log.reports().front();
    ctxmgr::file_lock first(path_);
    const unsigned line = __LINE__ - 1;
    first = ctxmgr::file_lock(directory_ / "other.lock");
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u) << "the one assigned over was dropped";
    EXPECT_TRUE(
        ctxmgr::testing::reports_never_entered(reports[0], "file_lock", "file_lock_test.cpp", line))
        << reports[0];
    ctxmgr::with(first, [] {});
}

// --- failures while releasing ----------------------------------------------------------------

// Closes the lock's descriptor behind its back, so that unlocking and closing fail with EBADF.
void sabotage(const std::filesystem::path& path) {
    const int fd = descriptor_for(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::close(fd), 0);
}

TEST_F(FileLock, AFailedReleaseThrowsAnIoErrorAndStillCountsAsReleased) {
    ctxmgr::file_lock lock(path_);
    lock.enter();
    sabotage(path_);
    try {
        lock.release();
        ADD_FAILURE() << "no exception";
    } catch (const ctxmgr::io_error& e) {
        EXPECT_EQ(e.code(), std::errc::bad_file_descriptor);
        EXPECT_TRUE(contains(e.what(), "unlock \"" + path_.string() + '"')) << e.what();
    }
    EXPECT_FALSE(lock.held());
    EXPECT_NO_THROW(lock.release());
}

TEST_F(FileLock, ExitChainsAReleaseFailureToThePendingException) {
    std::exception_ptr thrown;
    const auto caught = exception_from([&] {
        ctxmgr::with(ctxmgr::file_lock(path_), [&] {
            sabotage(path_);
            ctxmgr::testing::throw_recorded(thrown);
        });
    });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::io_error>(caught));
    const auto text = ctxmgr::describe(caught);
    EXPECT_TRUE(contains(text, "nested: ctxmgr::testing::test_error: boom")) << text;
    // Without a pending exception, exit throws the failure alone.
    const auto alone =
        exception_from([&] { ctxmgr::with(ctxmgr::file_lock(path_), [&] { sabotage(path_); }); });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::io_error>(alone));
    EXPECT_FALSE(contains(ctxmgr::describe(alone), "nested")) << ctxmgr::describe(alone);
}

TEST_F(FileLock, TheDestructorSendsAReleaseFailureToTheUnraisableHook) {
    ctxmgr::testing::unraisable_capture capture;
    {
        ctxmgr::file_lock lock(path_);
        lock.enter();
        sabotage(path_);
    }
    ASSERT_EQ(capture.reports.size(), 1u);
    EXPECT_EQ(capture.reports[0], "file lock \"" + path_.string() +
                                      "\" exclusive: release in destructor: unlock \"" +
                                      path_.string() + "\": Bad file descriptor");
}

// --- leak tracking -----------------------------------------------------------------------------

TEST_F(FileLock, IsRegisteredWhileHeldWithThePathTheModeAndTheLine) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "tracking is compiled out";
    auto find = [&]() -> std::optional<ctxmgr::resource_info> {
        for (auto& resource : ctxmgr::live_resources()) {
            if (resource.kind == "file lock") return resource;
        }
        return std::nullopt;
    };
    ctxmgr::file_lock lock(path_, lock_mode::shared);
    const auto line = __LINE__ - 1;
    EXPECT_FALSE(find()) << "registered only while held";
    lock.enter();
    const auto resource = find();
    ASSERT_TRUE(resource);
    EXPECT_EQ(resource->description, '"' + path_.string() + "\" shared");
    EXPECT_EQ(resource->where.line(), static_cast<std::uint_least32_t>(line));
    EXPECT_TRUE(contains(resource->where.file_name(), "file_lock_test.cpp"));
    lock.release();
    EXPECT_FALSE(find());
}

// --- lock-order checking -----------------------------------------------------------------------

class FileLockOrder : public FileLock {
  protected:
    void SetUp() override {
        if (!ctxmgr::lock_order_check_enabled) {
            GTEST_SKIP() << "the lock-order checker is compiled out in this build "
                            "(CTXMGR_LOCK_ORDER_CHECK=0); checked.FileLockOrder.* run it";
        }
        FileLock::SetUp();
        previous_ = ctxmgr::set_lock_order_handler([this](std::string_view report) {
            reports_.emplace_back(report);
            if (throw_on_report_) throw test_error("lock-order report");
        });
    }
    void TearDown() override {
        if (!ctxmgr::lock_order_check_enabled) return;
        ctxmgr::set_lock_order_handler(std::move(previous_));
        FileLock::TearDown();
    }

    std::vector<std::string> reports_;
    bool throw_on_report_ = false;

  private:
    ctxmgr::lock_order_handler previous_;
};

TEST_F(FileLockOrder, AnInversionBetweenTwoSpellingsOfTheSameFilesIsReported) {
    const auto a = directory_ / "a.lock";
    const auto b = directory_ / "b.lock";
    ctxmgr::with(ctxmgr::file_lock(a), [&] { ctxmgr::with(ctxmgr::file_lock(b), [] {}); });
    EXPECT_TRUE(reports_.empty());
    // The same files through other paths: the checker knows them by their canonical path.
    const auto b_again = directory_ / "." / "b.lock";
    std::filesystem::create_symlink(a, directory_ / "link.lock");
    ctxmgr::with(ctxmgr::file_lock(b_again), [&] {
        ctxmgr::with(ctxmgr::file_lock(directory_ / "link.lock", lock_mode::shared), [] {});
    });
    ASSERT_EQ(reports_.size(), 1u);
    const auto canonical_a = std::filesystem::canonical(a).string();
    const auto canonical_b = std::filesystem::canonical(b).string();
    EXPECT_TRUE(contains(reports_[0], "file lock \"" + canonical_a + '"')) << reports_[0];
    EXPECT_TRUE(contains(reports_[0], "file lock \"" + canonical_b + '"')) << reports_[0];
    EXPECT_TRUE(contains(reports_[0], "file_lock_test.cpp:")) << reports_[0];
}

TEST_F(FileLockOrder, FileLocksAndMutexesShareOneOrder) {
    std::mutex m;
    ctxmgr::with(ctxmgr::lock(m), [&] { ctxmgr::with(ctxmgr::file_lock(path_), [] {}); });
    ctxmgr::with(ctxmgr::file_lock(path_), [&] { ctxmgr::with(ctxmgr::lock(m), [] {}); });
    ctxmgr::forget_lock_order(m);
    ASSERT_EQ(reports_.size(), 1u);
    EXPECT_TRUE(contains(reports_[0], "std::mutex at 0x")) << reports_[0];
}

TEST_F(FileLockOrder, WaitingForeverOnALockThisThreadHoldsIsReported) {
    throw_on_report_ = true;
    ctxmgr::with(ctxmgr::file_lock(path_), [&] {
        // Without a timeout this would block for ever on the thread's own lock.
        EXPECT_THROW(ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared), [] {}), test_error);
        // With one it only times out, which is not a deadlock.
        EXPECT_THROW(ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared, 0s), [] {}),
                     ctxmgr::timeout_error);
    });
    ASSERT_EQ(reports_.size(), 1u);
    EXPECT_TRUE(reports_[0].starts_with("recursive locking")) << reports_[0];
    // Two shared holds coexist.
    ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared),
                 [&] { ctxmgr::with(ctxmgr::file_lock(path_, lock_mode::shared), [] {}); });
    EXPECT_EQ(reports_.size(), 1u);
}

TEST_F(FileLockOrder, AHoldReleasedOnAnotherThreadIsForgottenHere) {
    const auto other = directory_ / "other.lock";
    ctxmgr::file_lock lock(path_);
    lock.enter();
    std::thread([moved = std::move(lock)]() mutable { moved.release(); }).join();
    // Were path_ still counted as held here, this would record path_ -> other, and the
    // opposite order below would be reported.
    ctxmgr::with(ctxmgr::file_lock(other), [] {});
    ctxmgr::with(ctxmgr::file_lock(other), [&] { ctxmgr::with(ctxmgr::file_lock(path_), [] {}); });
    EXPECT_TRUE(reports_.empty()) << reports_[0];
}

}  // namespace
