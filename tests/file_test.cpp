#include <ctxmgr/exit_stack.hpp>
#include <ctxmgr/file.hpp>
#include <ctxmgr/tracking.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
#include <random>
#include <ranges>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "child.hpp"
#include "recording.hpp"

extern char** environ;

// --- fault injection ------------------------------------------------------------------------
//
// The library is linked statically into this program, so these definitions take the place
// of libc's for its calls: each passes through to the next definition (libc, or a sanitizer's
// interceptor) unless a test armed it.

namespace injected {

int fsync_fail_call = 0;  // the call (1-based, counted in fsync_fds) that fails; 0 for none
int fsync_error = EIO;
std::vector<int> fsync_fds;  // the descriptor of every fsync since reset()

int close_fd = -1;  // close(close_fd) is counted in close_calls and fails close_failures times
int close_failures = 0;
int close_error = EIO;
int close_calls = 0;

int write_fd = -1;  // write(write_fd) writes at most write_short bytes (when not 0), then fails
std::size_t write_short = 0;
int write_failures = 0;
int write_error = ENOSPC;

bool refuse_tmpfile = false;  // openat with O_TMPFILE fails with EOPNOTSUPP

void reset() {
    fsync_fail_call = 0;
    fsync_error = EIO;
    fsync_fds.clear();
    close_fd = -1;
    close_failures = 0;
    close_error = EIO;
    close_calls = 0;
    write_fd = -1;
    write_short = 0;
    write_failures = 0;
    write_error = ENOSPC;
    refuse_tmpfile = false;
}

template <class Function>
Function next(const char* name) {
    void* symbol = ::dlsym(RTLD_NEXT, name);
    Function function = nullptr;
    std::memcpy(&function, &symbol, sizeof function);
    return function;
}

}  // namespace injected

extern "C" int fsync(int fd) {
    static const auto real = injected::next<int (*)(int)>("fsync");
    injected::fsync_fds.push_back(fd);
    if (static_cast<int>(injected::fsync_fds.size()) == injected::fsync_fail_call) {
        errno = injected::fsync_error;
        return -1;
    }
    return real(fd);
}

extern "C" int close(int fd) {
    static const auto real = injected::next<int (*)(int)>("close");
    const int result = real(fd);
    if (fd == injected::close_fd) {
        ++injected::close_calls;
        if (injected::close_failures > 0) {
            --injected::close_failures;
            errno = injected::close_error;
            return -1;
        }
    }
    return result;
}

extern "C" ssize_t write(int fd, const void* data, std::size_t size) {
    static const auto real = injected::next<ssize_t (*)(int, const void*, std::size_t)>("write");
    if (fd == injected::write_fd && injected::write_failures > 0) {
        if (injected::write_short != 0) {
            return real(fd, data, std::min(size, std::exchange(injected::write_short, 0)));
        }
        --injected::write_failures;
        errno = injected::write_error;
        return -1;
    }
    return real(fd, data, size);
}

extern "C" int openat(int directory, const char* path, int flags, ...) {
    static const auto real = injected::next<int (*)(int, const char*, int, ...)>("openat");
    mode_t mode = 0;
    if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) {
        std::va_list arguments;
        va_start(arguments, flags);
        mode = va_arg(arguments, mode_t);
        va_end(arguments);
    }
    if (injected::refuse_tmpfile && (flags & O_TMPFILE) == O_TMPFILE) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return real(directory, path, flags, mode);
}

namespace {

namespace fs = std::filesystem;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::in_child;
using ctxmgr::testing::test_error;
using ctxmgr::testing::throw_recorded;
using ctxmgr::testing::unraisable_capture;

// --- helpers --------------------------------------------------------------------------------

// Every test gets its own directory, and $TMPDIR points into it so that temporary files and
// directories land there too.
class Files : public ::testing::Test {
  protected:
    void SetUp() override {
        injected::reset();
        std::string pattern = (fs::temp_directory_path() / "ctxmgr-file-test-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
        dir_ = pattern;
        tmp_ = dir_ / "tmp";
        fs::create_directory(tmp_);
        if (const char* tmpdir = std::getenv("TMPDIR")) saved_tmpdir_ = tmpdir;
        ::setenv("TMPDIR", tmp_.c_str(), 1);
    }

    void TearDown() override {
        injected::reset();
        if (saved_tmpdir_) {
            ::setenv("TMPDIR", saved_tmpdir_->c_str(), 1);
        } else {
            ::unsetenv("TMPDIR");
        }
        std::error_code ignored;
        fs::remove_all(dir_, ignored);
    }

    [[nodiscard]] fs::path at(std::string_view name) const { return dir_ / name; }

    fs::path dir_;
    fs::path tmp_;
    std::optional<std::string> saved_tmpdir_;
};

// Reading and writing for the checks, without ctxmgr.
std::string contents(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

void put(const fs::path& path, std::string_view text) {
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(text.data(), static_cast<long>(text.size()));
}

std::vector<std::string> entries(const fs::path& directory) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) {
        names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
}

mode_t mode_of(const fs::path& path) {
    struct stat status {};
    EXPECT_EQ(::lstat(path.c_str(), &status), 0) << path;
    return status.st_mode & 07777;
}

mode_t current_umask() {
    const mode_t mask = ::umask(022);
    ::umask(mask);
    return mask;
}

// What `f` threw, as an io_error; fails the test if it threw something else or nothing.
template <class F>
std::optional<ctxmgr::io_error> io_error_from(F&& f) {
    try {
        std::forward<F>(f)();
    } catch (const ctxmgr::io_error& e) {
        return e;
    } catch (...) {
        ADD_FAILURE() << "expected io_error, got " << ctxmgr::describe(std::current_exception());
        return std::nullopt;
    }
    ADD_FAILURE() << "expected io_error, nothing was thrown";
    return std::nullopt;
}

std::string message(int error_number) {
    return std::generic_category().message(error_number);
}

// Runs a program found on PATH with its standard output and error in `output`; returns the
// wait status, or -1 if it could not start. LeakSanitizer cannot work under ptrace, so a
// sanitized program started under strace runs without it.
int run(const std::vector<std::string>& arguments, const fs::path& output) {
    std::vector<std::string> copies = arguments;
    std::vector<char*> argv;
    for (auto& argument : copies) argv.push_back(argument.data());
    argv.push_back(nullptr);
    std::vector<std::string> environment;
    std::string asan_options = "ASAN_OPTIONS=";
    for (char** variable = environ; *variable != nullptr; ++variable) {
        const std::string_view text(*variable);
        if (text.starts_with("ASAN_OPTIONS=")) {
            asan_options = std::string(text) + ':';
        } else {
            environment.emplace_back(text);
        }
    }
    environment.push_back(asan_options + "detect_leaks=0");
    std::vector<char*> envp;
    for (auto& variable : environment) envp.push_back(variable.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawn_file_actions_addopen(&actions, 1, output.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                       0600);
    ::posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = 0;
    const int spawned = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
    ::posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) return -1;
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
}

bool exited_with(int status, int code) {
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code;
}

// --- open and modes -------------------------------------------------------------------------

TEST_F(Files, TheHeadersExamplesWork) {
    const auto back = fs::current_path();
    fs::current_path(dir_);
    ctxmgr::with(ctxmgr::open("hello.txt", "w"),
                 [](ctxmgr::file& f) { f.write("Hello, world!\n"); });
    ctxmgr::with(ctxmgr::atomic_write("settings.ini"),
                 [](ctxmgr::file& f) { f.write("threads = 4\n"); });
    std::string text = ctxmgr::open("hello.txt").read_all();
    fs::current_path(back);
    EXPECT_EQ(text, "Hello, world!\n");
    EXPECT_EQ(contents(at("settings.ini")), "threads = 4\n");
}

TEST_F(Files, WriteModesCreateOrTruncateAndRefuseToRead) {
    for (const char* mode : {"w", "wb", "wt", "bw"}) {
        const auto path = at(std::string("w-") + mode);
        put(path, "old contents, longer");
        ctxmgr::with(ctxmgr::open(path, mode), [](ctxmgr::file& f) {
            f.write("new");
            const auto error = io_error_from([&] { static_cast<void>(f.read(1)); });
            ASSERT_TRUE(error);
            EXPECT_EQ(error->code().value(), EBADF);
            EXPECT_EQ(std::string(error->what()),
                      "read \"" + f.path().string() + "\": not readable: " + message(EBADF));
        });
        EXPECT_EQ(contents(path), "new") << mode;
        ctxmgr::with(ctxmgr::open(at(std::string("new-") + mode), mode),
                     [](ctxmgr::file& f) { f.write("created"); });
        EXPECT_EQ(contents(at(std::string("new-") + mode)), "created") << mode;
    }
}

TEST_F(Files, WritePlusReadsBackWhatItWrote) {
    const auto path = at("w-plus");
    put(path, "old");
    ctxmgr::with(ctxmgr::open(path, "w+"), [](ctxmgr::file& f) {
        f.write("hello world");
        f.seek(0);
        EXPECT_EQ(f.read_all(), "hello world");
    });
    EXPECT_EQ(contents(path), "hello world");
}

TEST_F(Files, ReadModesReadAndRefuseToWrite) {
    const auto path = at("r");
    put(path, "line one\nline two\n");
    for (const char* mode : {"r", "rb", "rt", "tr"}) {
        ctxmgr::with(ctxmgr::open(path, mode), [&](ctxmgr::file& f) {
            EXPECT_EQ(f.read_all(), "line one\nline two\n") << mode;
            const auto error = io_error_from([&] { f.write("x"); });
            ASSERT_TRUE(error);
            EXPECT_EQ(error->code().value(), EBADF);
            EXPECT_EQ(std::string(error->what()),
                      "write \"" + path.string() + "\": not writable: " + message(EBADF));
        });
    }
    EXPECT_EQ(contents(path), "line one\nline two\n");
}

TEST_F(Files, ReadPlusOverwritesInPlace) {
    const auto path = at("r-plus");
    put(path, "hello world");
    ctxmgr::with(ctxmgr::open(path, "r+"), [](ctxmgr::file& f) {
        EXPECT_EQ(f.read(6), "hello ");
        f.write("WORLD");  // the read-ahead went to the end; the write lands at position 6
        EXPECT_EQ(f.tell(), 11u);
    });
    EXPECT_EQ(contents(path), "hello WORLD");
}

TEST_F(Files, AppendModesWriteAtTheEnd) {
    const auto path = at("a");
    put(path, "old");
    ctxmgr::with(ctxmgr::open(path, "a"), [](ctxmgr::file& f) {
        EXPECT_EQ(f.tell(), 3u);
        f.write("+new");
    });
    EXPECT_EQ(contents(path), "old+new");
    ctxmgr::with(ctxmgr::open(path, "a+b"), [](ctxmgr::file& f) {
        f.seek(0);
        EXPECT_EQ(f.read(3), "old");
        f.write("!");  // O_APPEND: at the end whatever the position
        f.seek(0);
        EXPECT_EQ(f.read_all(), "old+new!");
    });
    EXPECT_EQ(contents(path), "old+new!");
    ctxmgr::with(ctxmgr::open(at("a-new"), "ab"), [](ctxmgr::file& f) { f.write("created"); });
    EXPECT_EQ(contents(at("a-new")), "created");
}

TEST_F(Files, ExclusiveModesCreateAndRefuseAnExistingFile) {
    const auto path = at("x");
    ctxmgr::with(ctxmgr::open(path, "x"), [](ctxmgr::file& f) { f.write("first"); });
    EXPECT_EQ(contents(path), "first");
    for (const char* mode : {"x", "x+", "xb"}) {
        const auto error = io_error_from([&] { static_cast<void>(ctxmgr::open(path, mode)); });
        ASSERT_TRUE(error);
        EXPECT_EQ(error->code().value(), EEXIST);
        EXPECT_EQ(std::string(error->what()), "open \"" + path.string() + "\": " + message(EEXIST));
        EXPECT_EQ(error->path(), path.string());
    }
    EXPECT_EQ(contents(path), "first");
    ctxmgr::with(ctxmgr::open(at("x-plus"), "+x"), [](ctxmgr::file& f) {
        f.write("abc");
        f.seek(1);
        EXPECT_EQ(f.read(5), "bc");
    });
}

TEST_F(Files, TextAndBinaryModesKeepEveryByte) {
    const std::string bytes("a\r\nb\nc\0d\r\x1a\xff", 12);
    for (const char* mode : {"wb", "wt", "w"}) {
        const auto path = at(std::string("bytes-") + mode);
        ctxmgr::with(ctxmgr::open(path, mode), [&](ctxmgr::file& f) { f.write(bytes); });
        EXPECT_EQ(contents(path), bytes);
        for (const char* read_mode : {"rb", "rt"}) {
            EXPECT_EQ(ctxmgr::with(ctxmgr::open(path, read_mode),
                                   [](ctxmgr::file& f) { return f.read_all(); }),
                      bytes);
        }
    }
}

TEST_F(Files, BadModesThrowInvalidArgumentNamingTheModeAndOpenNothing) {
    const auto path = at("never-created");
    for (const char* mode :
         {"", "rw", "rr", "wx", "q", "r++", "tb", "bb", "tt", "U", "w ", "ra+"}) {
        try {
            static_cast<void>(ctxmgr::open(path, mode));
            ADD_FAILURE() << "mode \"" << mode << "\" was accepted";
        } catch (const std::invalid_argument& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find("invalid mode \"" + std::string(mode) + '"'), std::string::npos)
                << what;
            EXPECT_NE(what.find(path.string()), std::string::npos) << what;
        }
    }
    EXPECT_FALSE(fs::exists(path));
}

TEST_F(Files, OpeningAMissingFileIsEnoentNamingThePath) {
    const auto error = io_error_from([&] { static_cast<void>(ctxmgr::open(at("missing"))); });
    ASSERT_TRUE(error);
    EXPECT_EQ(error->code(), std::errc::no_such_file_or_directory);
    EXPECT_EQ(std::string(error->what()),
              "open \"" + at("missing").string() + "\": " + message(ENOENT));
}

TEST_F(Files, OpeningADirectoryForReadingIsEisdir) {
    const auto error = io_error_from([&] { static_cast<void>(ctxmgr::open(dir_, "r")); });
    ASSERT_TRUE(error);
    EXPECT_EQ(error->code().value(), EISDIR);
    const auto for_writing = io_error_from([&] { static_cast<void>(ctxmgr::open(dir_, "w")); });
    ASSERT_TRUE(for_writing);
    EXPECT_EQ(for_writing->code().value(), EISDIR);
}

TEST_F(Files, DescriptorsAreCloseOnExec) {
    for (const char* mode : {"r", "w", "a+", "x"}) {
        const auto path = at("cloexec");
        if (mode[0] != 'x') put(path, "x");
        ctxmgr::with(ctxmgr::open(path, mode), [](ctxmgr::file& f) {
            EXPECT_NE(::fcntl(f.native_handle(), F_GETFD) & FD_CLOEXEC, 0);
        });
        fs::remove(path);
    }
    auto temporary = ctxmgr::temporary_file();
    EXPECT_NE(::fcntl(temporary.native_handle(), F_GETFD) & FD_CLOEXEC, 0);
    temporary.close();
}

TEST_F(Files, NewFilesGetTheRequestedPermissionsLessTheUmask) {
    ctxmgr::open_options options;
    options.permissions = fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                          fs::perms::others_write;
    ctxmgr::with(ctxmgr::open(at("perm"), "w", options), [](ctxmgr::file&) {});
    EXPECT_EQ(mode_of(at("perm")), 0642 & ~current_umask());
    ctxmgr::with(ctxmgr::open(at("default"), "w"), [](ctxmgr::file&) {});
    EXPECT_EQ(mode_of(at("default")), 0666 & ~current_umask());
}

// --- never silently lost --------------------------------------------------------------------

TEST_F(Files, ExitFlushesAndCloses) {
    const auto path = at("flushed");
    ctxmgr::with(ctxmgr::open(path, "w"), [&](ctxmgr::file& f) {
        f.write("buffered");
        EXPECT_EQ(fs::file_size(path), 0u);  // still in the buffer
    });
    EXPECT_EQ(contents(path), "buffered");
}

TEST_F(Files, ABodyThatThrowsStillFlushesAndClosesAndItsExceptionPropagates) {
    const auto path = at("partial");
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(ctxmgr::open(path, "w"), [&](ctxmgr::file& f) {
            f.write("half a record");
            throw_recorded(thrown);
        });
    });
    EXPECT_EQ(e, thrown);  // the very object
    EXPECT_EQ(contents(path), "half a record");
}

TEST_F(Files, WritingToDevFullMakesExitThrowEnospcNamingThePath) {
    const auto error = io_error_from([] {
        ctxmgr::with(ctxmgr::open("/dev/full", "w"), [](ctxmgr::file& f) { f.write("lost?"); });
    });
    ASSERT_TRUE(error);
    EXPECT_EQ(error->code(), std::errc::no_space_on_device);
    EXPECT_EQ(std::string(error->what()), "write \"/dev/full\": " + message(ENOSPC));
    EXPECT_EQ(error->path(), "/dev/full");
}

TEST_F(Files, AFailedFlushWithAnExceptionPendingIsThrownWithItNested) {
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(ctxmgr::open("/dev/full", "w"), [&](ctxmgr::file& f) {
            f.write("x");
            throw_recorded(thrown);
        });
    });
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::io_error& error) {
        EXPECT_EQ(error.code().value(), ENOSPC);
        const auto* nested = dynamic_cast<const std::nested_exception*>(&error);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), thrown);
    }
}

TEST_F(Files, CloseThrowsWhatFailedAndIsIdempotent) {
    auto f = ctxmgr::open("/dev/full", "w");
    f.write("x");
    const auto error = io_error_from([&] { f.close(); });
    ASSERT_TRUE(error);
    EXPECT_EQ(error->code().value(), ENOSPC);
    EXPECT_TRUE(f.closed());
    EXPECT_NO_THROW(f.close());
    EXPECT_NO_THROW(f.exit(nullptr));
}

TEST_F(Files, AFlushThatFailsKeepsTheBytesForTheNextTry) {
    const auto path = at("retry");
    auto f = ctxmgr::open(path, "w");
    f.write("abcdef");
    injected::write_fd = f.native_handle();
    injected::write_short = 2;  // "ab" is written, then the disk is full
    injected::write_failures = 1;
    const auto error = io_error_from([&] { f.flush(); });
    ASSERT_TRUE(error);
    EXPECT_EQ(error->code().value(), ENOSPC);
    EXPECT_EQ(contents(path), "ab");
    EXPECT_EQ(f.tell(), 6u);  // the position still counts the four pending bytes
    f.flush();                // space again: the rest goes out, once
    EXPECT_EQ(contents(path), "abcdef");
    f.close();
}

TEST_F(Files, GoingOverRlimitFsizeIsEfbig) {
    const auto path = at("big");
    EXPECT_TRUE(in_child([&] {
        ::signal(SIGXFSZ, SIG_IGN);
        rlimit limit{};
        ::getrlimit(RLIMIT_FSIZE, &limit);
        limit.rlim_cur = 4096;
        if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return false;
        try {
            ctxmgr::with(ctxmgr::open(path, "w"),
                         [](ctxmgr::file& f) { f.write(std::string(10000, 'x')); });
        } catch (const ctxmgr::io_error& e) {
            return e.code().value() == EFBIG && e.path() == path.string() &&
                   std::string(e.what()) == "write \"" + path.string() + "\": " + message(EFBIG);
        }
        return false;
    }));
    EXPECT_EQ(fs::file_size(path), 4096u);
}

TEST_F(Files, AForgottenFileIsFlushedByItsDestructor) {
    const auto path = at("forgotten");
    unraisable_capture capture;
    {
        auto f = ctxmgr::open(path, "w");
        f.write("not lost");
    }
    EXPECT_EQ(contents(path), "not lost");
    EXPECT_TRUE(capture.reports.empty());
}

TEST_F(Files, AFailingFlushInTheDestructorReachesTheUnraisableHookWithThePath) {
    unraisable_capture capture;
    {
        auto f = ctxmgr::open("/dev/full", "w");
        f.write("x");
    }
    ASSERT_EQ(capture.reports.size(), 1u);
    EXPECT_EQ(capture.reports[0],
              "file \"/dev/full\": close in destructor: write \"/dev/full\": " + message(ENOSPC));
}

TEST_F(Files, EintrIsRetried) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    const pid_t writer = ::fork();
    ASSERT_GE(writer, 0);
    if (writer == 0) {
        ::close(fds[0]);
        ::usleep(300'000);  // while the parent's read(2) is interrupted again and again
        const ssize_t written = ::write(fds[1], "hello", 5);
        ::_exit(written == 5 ? 0 : 1);
    }
    ::close(fds[1]);
    static volatile sig_atomic_t interruptions = 0;
    interruptions = 0;
    struct sigaction action {};
    action.sa_handler = [](int) { interruptions = interruptions + 1; };
    action.sa_flags = 0;  // no SA_RESTART: read(2) fails with EINTR
    struct sigaction previous {};
    ::sigaction(SIGALRM, &action, &previous);
    itimerval every_20ms{{0, 20'000}, {0, 20'000}};
    ::setitimer(ITIMER_REAL, &every_20ms, nullptr);
    std::string text;
    {
        auto f = ctxmgr::open("/dev/fd/" + std::to_string(fds[0]), "rb");
        text = f.read(5);
        f.close();
    }
    itimerval off{};
    ::setitimer(ITIMER_REAL, &off, nullptr);
    ::sigaction(SIGALRM, &previous, nullptr);
    ::close(fds[0]);
    int status = 0;
    ::waitpid(writer, &status, 0);
    EXPECT_EQ(text, "hello");
    EXPECT_GT(interruptions, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_F(Files, CloseIsCalledOnceEvenWhenItFails) {
    const auto path = at("close-fails");
    auto f = ctxmgr::open(path, "w");
    f.write("data");
    injected::close_fd = f.native_handle();
    injected::close_failures = 1;
    const auto error = io_error_from([&] { f.close(); });
    ASSERT_TRUE(error);
    EXPECT_EQ(std::string(error->what()), "close \"" + path.string() + "\": " + message(EIO));
    EXPECT_EQ(injected::close_calls, 1);
    EXPECT_TRUE(f.closed());
    EXPECT_EQ(contents(path), "data");  // the flush before it succeeded
}

TEST_F(Files, CloseInterruptedIsNotAFailureAndNotRetried) {
    auto f = ctxmgr::open(at("close-eintr"), "w");
    injected::close_fd = f.native_handle();
    injected::close_failures = 1;
    injected::close_error = EINTR;
    EXPECT_NO_THROW(f.close());
    EXPECT_EQ(injected::close_calls, 1);
}

TEST_F(Files, AFailedFsyncIsReportedAndNeverRetried) {
    const auto path = at("sync");
    auto f = ctxmgr::open(path, "w");
    f.write("data");
    injected::fsync_fail_call = 1;
    const auto error = io_error_from([&] { f.sync(); });
    ASSERT_TRUE(error);
    EXPECT_EQ(std::string(error->what()), "fsync \"" + path.string() + "\": " + message(EIO));
    EXPECT_EQ(contents(path), "data");  // flushed before the fsync
    const auto again = io_error_from([&] { f.sync(); });
    ASSERT_TRUE(again);
    EXPECT_EQ(again->code().value(), EIO);
    EXPECT_EQ(injected::fsync_fds.size(), 1u);  // the second sync did not call fsync
    f.close();
}

TEST_F(Files, SyncOnCloseFsyncsOnceAndReportsAFailure) {
    ctxmgr::open_options options;
    options.sync_on_close = true;
    ctxmgr::with(ctxmgr::open(at("synced"), "w", options), [](ctxmgr::file& f) {
        f.write("x");
        injected::fsync_fds.clear();
    });
    EXPECT_EQ(injected::fsync_fds.size(), 1u);
    injected::reset();
    injected::fsync_fail_call = 1;
    const auto error = io_error_from([&] {
        ctxmgr::with(ctxmgr::open(at("synced"), "w", options),
                     [](ctxmgr::file& f) { f.write("y"); });
    });
    ASSERT_TRUE(error);
    EXPECT_EQ(error->code().value(), EIO);
    EXPECT_NE(std::string(error->what()).find("fsync"), std::string::npos);
}

TEST_F(Files, ALaterFailureIsThrownWithTheEarlierOneNested) {
    auto f = ctxmgr::open("/dev/full", "w");
    f.write("x");
    injected::close_fd = f.native_handle();
    injected::close_failures = 1;
    try {
        f.close();
        ADD_FAILURE() << "close did not throw";
    } catch (const ctxmgr::io_error& e) {
        EXPECT_EQ(std::string(e.what()), "close \"/dev/full\": " + message(EIO));
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(ctxmgr::testing::what_of(nested->nested_ptr()),
                  "write \"/dev/full\": " + message(ENOSPC));
    }
}

TEST_F(Files, UsingAClosedFileThrowsClosedErrorNamingTheOperationAndPath) {
    const auto path = at("closed");
    auto f = ctxmgr::open(path, "w+");
    f.close();
    const std::vector<std::pair<std::string, std::function<void()>>> uses = {
        {"write", [&] { f.write("x"); }},
        {"write", [&] { f.write(std::string_view()); }},
        {"read", [&] { static_cast<void>(f.read(1)); }},
        {"read_all", [&] { static_cast<void>(f.read_all()); }},
        {"readline", [&] { static_cast<void>(f.readline()); }},
        {"lines", [&] { static_cast<void>(f.lines()); }},
        {"flush", [&] { f.flush(); }},
        {"sync", [&] { f.sync(); }},
        {"seek", [&] { f.seek(0); }},
        {"tell", [&] { static_cast<void>(f.tell()); }},
        {"truncate", [&] { f.truncate(0); }},
        {"enter", [&] { static_cast<void>(f.enter()); }},
    };
    for (const auto& [operation, use] : uses) {
        try {
            use();
            ADD_FAILURE() << operation << " on a closed file did not throw";
        } catch (const ctxmgr::closed_error& e) {
            EXPECT_EQ(std::string(e.what()),
                      operation + ": file \"" + path.string() + "\" is closed");
        }
    }
    static_assert(std::is_base_of_v<ctxmgr::protocol_error, ctxmgr::closed_error>);
    // As every resource's: the invalid handle, not an exception (resource_shape_test).
    EXPECT_EQ(f.native_handle(), -1);
}

TEST_F(Files, ADefaultConstructedFileIsClosed) {
    ctxmgr::file f;
    EXPECT_TRUE(f.closed());
    EXPECT_THROW(f.write("x"), ctxmgr::closed_error);
    EXPECT_NO_THROW(f.close());
}

// --- the buffer -----------------------------------------------------------------------------

TEST_F(Files, LargeWritesGoStraightToTheDescriptorInOrder) {
    const auto path = at("large");
    ctxmgr::open_options options;
    options.buffer_size = 16;
    auto f = ctxmgr::open(path, "w", options);
    f.write("head:");
    const std::string big(100, 'b');
    f.write(big);
    EXPECT_EQ(contents(path), "head:" + big);  // the pending bytes went first
    f.write("tail");
    EXPECT_EQ(contents(path), "head:" + big);
    f.close();
    EXPECT_EQ(contents(path), "head:" + big + "tail");
}

TEST_F(Files, AWriteThatFillsTheBufferExactlyIsKept) {
    const auto path = at("exact");
    ctxmgr::open_options options;
    options.buffer_size = 8;
    ctxmgr::with(ctxmgr::open(path, "w", options), [](ctxmgr::file& f) {
        f.write("1234");
        f.write("5678");  // fills it
        f.write("9");     // flushes the full buffer first
    });
    EXPECT_EQ(contents(path), "123456789");
}

TEST_F(Files, UnbufferedWritesGoOutAtOnce) {
    const auto path = at("unbuffered");
    ctxmgr::open_options options;
    options.buffer_size = 0;
    ctxmgr::with(ctxmgr::open(path, "w+", options), [&](ctxmgr::file& f) {
        f.write("a");
        EXPECT_EQ(contents(path), "a");
        f.write("bc\nd");
        EXPECT_EQ(contents(path), "abc\nd");
        f.seek(0);
        EXPECT_EQ(f.readline(), "abc\n");
        EXPECT_EQ(f.tell(), 4u);  // no read-ahead beyond the line
        EXPECT_EQ(f.read_all(), "d");
    });
}

TEST_F(Files, ReadingAndWritingShareOnePosition) {
    const auto path = at("shared");
    ctxmgr::with(ctxmgr::open(path, "w+"), [](ctxmgr::file& f) {
        f.write("hello world");
        EXPECT_EQ(f.tell(), 11u);
        f.seek(0);
        EXPECT_EQ(f.read(5), "hello");
        EXPECT_EQ(f.tell(), 5u);  // though the whole file was read ahead
        f.write("_");
        EXPECT_EQ(f.tell(), 6u);
        EXPECT_EQ(f.read(2), "wo");  // flushes the write first
        f.seek(-3, std::ios_base::cur);
        EXPECT_EQ(f.read_all(), "_world");
        EXPECT_EQ(f.seek(-5, std::ios_base::end), 6u);
        EXPECT_EQ(f.readline(), "world");
    });
    EXPECT_EQ(contents(path), "hello_world");
}

TEST_F(Files, SeekingBeforeTheStartIsEinvalAndKeepsThePosition) {
    ctxmgr::with(ctxmgr::open(at("seek"), "w+"), [](ctxmgr::file& f) {
        f.write("abc");
        f.seek(1);
        EXPECT_EQ(f.read(1), "b");
        const auto error = io_error_from([&] { f.seek(-10, std::ios_base::cur); });
        ASSERT_TRUE(error);
        EXPECT_EQ(error->code().value(), EINVAL);
        EXPECT_EQ(f.read(1), "c");
    });
}

TEST_F(Files, TruncateDefaultsToThePositionAndKeepsIt) {
    const auto path = at("truncate");
    ctxmgr::with(ctxmgr::open(path, "w+"), [&](ctxmgr::file& f) {
        f.write("0123456789");
        f.seek(4);
        EXPECT_EQ(f.truncate(), 4u);
        EXPECT_EQ(f.tell(), 4u);
        EXPECT_EQ(contents(path), "0123");
        f.seek(0);
        EXPECT_EQ(f.read(1), "0");  // reads ahead "0123"
        EXPECT_EQ(f.truncate(2), 2u);
        EXPECT_EQ(f.read_all(), "1");  // not the stale "123"
        EXPECT_EQ(f.truncate(6), 6u);
        EXPECT_EQ(fs::file_size(path), 6u);
    });
    ctxmgr::with(ctxmgr::open(path, "r"), [](ctxmgr::file& f) {
        const auto error = io_error_from([&] { f.truncate(0); });
        ASSERT_TRUE(error);
        EXPECT_EQ(error->code().value(), EBADF);
    });
}

TEST_F(Files, ReadReturnsUpToNBytesAndEmptyAtTheEnd) {
    const auto path = at("read-n");
    std::string text;
    for (int i = 0; i < 1000; ++i) text += std::to_string(i) + ',';
    put(path, text);
    ctxmgr::open_options options;
    options.buffer_size = 64;
    ctxmgr::with(ctxmgr::open(path, "r", options), [&](ctxmgr::file& f) {
        EXPECT_EQ(f.read(0), "");
        EXPECT_EQ(f.read(10), text.substr(0, 10));       // from the buffer
        EXPECT_EQ(f.read(1000), text.substr(10, 1000));  // mostly straight into the result
        EXPECT_EQ(f.read(30), text.substr(1010, 30));
        EXPECT_EQ(f.read(1'000'000), text.substr(1040));  // fewer at the end
        EXPECT_EQ(f.read(10), "");
        EXPECT_EQ(f.read_all(), "");
    });
}

TEST_F(Files, ReadOfAHugeCountReturnsTheRestWithoutAllocatingTheCount) {
    put(at("rest"), "abcdef");
    ctxmgr::with(ctxmgr::open(at("rest")), [](ctxmgr::file& f) {
        EXPECT_EQ(f.read(2), "ab");
        EXPECT_EQ(f.read(std::numeric_limits<std::size_t>::max() / 2), "cdef");
    });
}

TEST_F(Files, ReadIntoASpanFillsItOrStopsAtTheEnd) {
    const auto path = at("read-span");
    std::string text(300, '\0');
    for (std::size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>(i);
    put(path, text);
    ctxmgr::open_options options;
    options.buffer_size = 32;
    ctxmgr::with(ctxmgr::open(path, "rb", options), [&](ctxmgr::file& f) {
        std::vector<std::byte> buffer(100);
        EXPECT_EQ(f.read(std::span(buffer).first(10)), 10u);
        EXPECT_EQ(std::memcmp(buffer.data(), text.data(), 10), 0);
        EXPECT_EQ(f.read(buffer), 100u);
        EXPECT_EQ(std::memcmp(buffer.data(), text.data() + 10, 100), 0);
        EXPECT_EQ(f.read(std::span(buffer).first(5)), 5u);
        EXPECT_EQ(f.read(buffer), 100u);
        EXPECT_EQ(f.read(buffer), 85u);
        EXPECT_EQ(std::memcmp(buffer.data(), text.data() + 215, 85), 0);
        EXPECT_EQ(f.read(buffer), 0u);
    });
}

TEST_F(Files, BytesRoundTripThroughSpans) {
    const auto path = at("bytes");
    const std::vector<std::byte> bytes = {std::byte{0}, std::byte{0xff}, std::byte{'\n'},
                                          std::byte{0x80}};
    ctxmgr::with(ctxmgr::open(path, "wb"), [&](ctxmgr::file& f) { f.write(bytes); });
    std::vector<std::byte> back(8);
    const auto n =
        ctxmgr::with(ctxmgr::open(path, "rb"), [&](ctxmgr::file& f) { return f.read(back); });
    ASSERT_EQ(n, bytes.size());
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), back.begin()));
}

TEST_F(Files, ReadAllReadsTheRestOfFilesLargeAndSmall) {
    const auto path = at("all");
    std::string text;
    for (int i = 0; i < 100'000; ++i) text += "line " + std::to_string(i) + '\n';
    put(path, text);
    EXPECT_EQ(ctxmgr::with(ctxmgr::open(path), [](ctxmgr::file& f) { return f.read_all(); }), text);
    ctxmgr::with(ctxmgr::open(path), [&](ctxmgr::file& f) {
        EXPECT_EQ(f.readline(), "line 0\n");
        EXPECT_EQ(f.read_all(), text.substr(7));
    });
    put(at("empty"), "");
    EXPECT_EQ(ctxmgr::with(ctxmgr::open(at("empty")), [](ctxmgr::file& f) { return f.read_all(); }),
              "");
}

TEST_F(Files, ReadAllOfAFileOfMoreThan64MiB) {
    // The size from which read_all asks for huge pages for its result.
    std::string text((65 << 20) + 12345, '\0');
    for (std::size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 23);
    put(at("large"), text);
    ctxmgr::with(ctxmgr::open(at("large")), [&](ctxmgr::file& f) {
        EXPECT_EQ(f.read(3), text.substr(0, 3));
        const std::string rest = f.read_all();
        EXPECT_EQ(rest.size(), text.size() - 3);
        EXPECT_TRUE(rest == std::string_view(text).substr(3));
    });
}

// A pipe that a child process fills with `text` and then closes: more than a pipe holds, so
// the reader must read while the writer writes.
class pipe_from_child {
  public:
    explicit pipe_from_child(const std::string& text) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category());
        writer_ = ::fork();
        if (writer_ == 0) {
            ::close(fds[0]);
            std::size_t done = 0;
            while (done < text.size()) {
                const ssize_t n = ::write(fds[1], text.data() + done, text.size() - done);
                if (n <= 0) break;
                done += static_cast<std::size_t>(n);
            }
            ::_exit(done == text.size() ? 0 : 1);
        }
        ::close(fds[1]);
        read_end_ = fds[0];
    }
    pipe_from_child(const pipe_from_child&) = delete;
    pipe_from_child& operator=(const pipe_from_child&) = delete;
    ~pipe_from_child() {
        ::close(read_end_);
        if (writer_ > 0) ::waitpid(writer_, nullptr, 0);
    }
    // The read end as a path ctxmgr::open takes.
    std::string path() const { return "/dev/fd/" + std::to_string(read_end_); }
    // Whether the child wrote everything.
    bool writer_succeeded() {
        int status = 0;
        ::waitpid(std::exchange(writer_, -1), &status, 0);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }

  private:
    int read_end_ = -1;
    pid_t writer_ = -1;
};

// read_all() of a pipe that a child fills with `text`; checks that the child wrote it all.
std::string read_all_of_pipe(const std::string& text) {
    pipe_from_child pipe(text);
    std::string read;
    {
        auto f = ctxmgr::open(pipe.path(), "rb");
        read = f.read_all();
        f.close();
    }
    EXPECT_TRUE(pipe.writer_succeeded());
    return read;
}

TEST_F(Files, ReadAllDoesNotTrustTheSize) {
    // /proc files report size 0 and a pipe has none.
    const auto proc = ctxmgr::with(ctxmgr::open("/proc/self/status"),
                                   [](ctxmgr::file& f) { return f.read_all(); });
    EXPECT_NE(proc.find("Pid:"), std::string::npos);
    // Read with no size to go by, a small result keeps no room a buffer's size.
    EXPECT_LE(proc.capacity(), 2 * proc.size());
    const std::string text(200'000, 'p');
    EXPECT_EQ(read_all_of_pipe(text), text);
}

TEST_F(Files, ReadAllFromAPipeDoesNotGrowTheResultToFindTheEnd) {
    // 1 MiB fills the string exactly (its capacity doubles from 64 KiB); the read that finds
    // the end must not double it once more, copying the whole result for nothing.
    const std::string text(std::size_t{1} << 20, 'q');
    const std::string read = read_all_of_pipe(text);
    EXPECT_EQ(read, text);
    EXPECT_LT(read.capacity(), 2 * read.size());
}

TEST_F(Files, ReadOfNFromAPipeGathersSeveralReadsUpToN) {
    std::string text(300'000, '\0');
    for (std::size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
    pipe_from_child pipe(text);
    std::string first;
    std::string rest;
    {
        auto f = ctxmgr::open(pipe.path(), "rb");
        first = f.read(150'001);
        rest = f.read(1'000'000);  // fewer at the end
        EXPECT_EQ(f.read(100'000), "");
        f.close();
    }
    EXPECT_TRUE(pipe.writer_succeeded());
    EXPECT_EQ(first, text.substr(0, 150'001));
    EXPECT_EQ(rest, text.substr(150'001));
}

TEST_F(Files, ReadOfABlockFromAProcFileThatTakesWholeRecords) {
    // /proc/self/pagemap reports size 0 and refuses a read(2) that is not a whole number of its
    // 8-byte records: the first read of a large read(n) must not be a guess at a small size.
    const int probe = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (probe < 0) GTEST_SKIP() << "/proc/self/pagemap cannot be opened here";
    ::close(probe);
    ctxmgr::with(ctxmgr::open("/proc/self/pagemap", "rb"), [](ctxmgr::file& f) {
        EXPECT_EQ(f.read(65'536).size(), 65'536U);
        EXPECT_EQ(f.read(1 << 20).size(), std::size_t{1} << 20);
    });
}

TEST_F(Files, ANonBlockingReadKeepsWhatCameBeforeItWouldBlock) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    const std::string path = "/dev/fd/" + std::to_string(fds[0]);
    {
        auto f = ctxmgr::open(path, "rb");  // a description of its own: made non-blocking here
        ASSERT_EQ(::fcntl(f.native_handle(), F_SETFL, O_NONBLOCK), 0);
        // Nothing there yet: no data to lose, so the failure is reported.
        try {
            static_cast<void>(f.read_all());
            ADD_FAILURE() << "read_all returned with nothing to read";
        } catch (const ctxmgr::io_error& e) {
            EXPECT_EQ(e.code(), std::error_code(EAGAIN, std::generic_category()));
            EXPECT_NE(std::string(e.what()).find("read"), std::string::npos) << e.what();
        }
        const std::string part(100, 'x');
        ASSERT_EQ(::write(fds[1], part.data(), part.size()), 100);
        EXPECT_EQ(f.read_all(), part);  // then it would block: the 100 bytes are the result
        ASSERT_EQ(::write(fds[1], "abc", 3), 3);
        EXPECT_EQ(f.read(1 << 20), "abc");
        f.close();
    }
    ::close(fds[0]);
    ::close(fds[1]);
}

TEST_F(Files, ReadlineKeepsTheNewlineAndHonoursALimit) {
    const auto path = at("lines");
    put(path, "a\nbb\n\nccc");
    ctxmgr::with(ctxmgr::open(path), [](ctxmgr::file& f) {
        EXPECT_EQ(f.readline(), "a\n");
        EXPECT_EQ(f.readline(1), "b");
        EXPECT_EQ(f.readline(), "b\n");
        EXPECT_EQ(f.readline(), "\n");
        EXPECT_EQ(f.readline(0), "");
        EXPECT_EQ(f.readline(), "ccc");
        EXPECT_EQ(f.readline(), "");
    });
}

TEST_F(Files, LinesIsAnInputRangeOverTheRemainingLines) {
    static_assert(std::ranges::input_range<ctxmgr::file::line_range>);
    static_assert(
        std::same_as<std::ranges::range_reference_t<ctxmgr::file::line_range>, const std::string&>);
    const auto path = at("range");
    const std::string long_line(100, 'L');
    put(path, "first\n" + long_line + "\n\nlast");
    ctxmgr::open_options options;
    options.buffer_size = 8;  // lines longer than the buffer
    ctxmgr::with(ctxmgr::open(path, "r", options), [&](ctxmgr::file& f) {
        EXPECT_EQ(f.readline(), "first\n");
        std::vector<std::string> lines;
        for (const std::string& line : f.lines()) lines.push_back(line);
        EXPECT_EQ(lines, (std::vector<std::string>{long_line + '\n', "\n", "last"}));
    });
    put(at("empty"), "");
    ctxmgr::with(ctxmgr::open(at("empty")), [](ctxmgr::file& f) {
        for ([[maybe_unused]] const auto& line : f.lines())
            ADD_FAILURE() << "a line in an empty file";
    });
}

TEST_F(Files, LinesComposeWithViews) {
    const auto path = at("views");
    put(path, "1\n22\n333\n4444\n");
    const auto lengths = ctxmgr::with(ctxmgr::open(path), [](ctxmgr::file& f) {
        std::vector<std::size_t> out;
        for (auto n : f.lines() | std::views::take(3) |
                          std::views::transform([](const std::string& s) { return s.size(); })) {
            out.push_back(n);
        }
        return out;
    });
    EXPECT_EQ(lengths, (std::vector<std::size_t>{2, 3, 4}));
}

// --- lifetime -------------------------------------------------------------------------------

TEST_F(Files, MovingTransfersTheFileAndItsPendingBytes) {
    const auto path = at("moved");
    auto a = ctxmgr::open(path, "w");
    a.write("pending");
    ctxmgr::file b(std::move(a));
    EXPECT_TRUE(a.closed());  // NOLINT(bugprone-use-after-move): a moved-from file is closed
    EXPECT_FALSE(b.closed());
    EXPECT_EQ(b.path(), path);
    b.close();
    EXPECT_EQ(contents(path), "pending");
}

TEST_F(Files, MoveAssignmentClosesTheFileItReplaces) {
    auto a = ctxmgr::open(at("first"), "w");
    a.write("first's");
    a = ctxmgr::open(at("second"), "w");
    EXPECT_EQ(contents(at("first")), "first's");
    EXPECT_EQ(a.path(), at("second"));
    a.close();
}

TEST_F(Files, MoveAssignmentThatFailsToCloseLeavesTheSourceAlone) {
    auto a = ctxmgr::open("/dev/full", "w");
    a.write("x");
    auto b = ctxmgr::open(at("source"), "w");
    b.write("kept");
    EXPECT_THROW(a = std::move(b), ctxmgr::io_error);
    EXPECT_TRUE(a.closed());
    ASSERT_FALSE(b.closed());  // NOLINT(bugprone-use-after-move): not moved, the close threw
    b.close();
    EXPECT_EQ(contents(at("source")), "kept");
}

TEST_F(Files, TwoFilesInOneWithAndManyInAnExitStack) {
    put(at("input.txt"), "context managers\n");
    ctxmgr::with(ctxmgr::open(at("input.txt")), ctxmgr::open(at("output.txt"), "w"),
                 [](ctxmgr::file& in, ctxmgr::file& out) { out.write(in.read_all()); });
    EXPECT_EQ(contents(at("output.txt")), "context managers\n");
    {
        ctxmgr::exit_stack stack;
        for (int i = 0; i < 3; ++i) {
            stack.enter_context(ctxmgr::open(at("many-" + std::to_string(i)), "w"))
                .write(std::to_string(i));
        }
    }
    for (int i = 0; i < 3; ++i)
        EXPECT_EQ(contents(at("many-" + std::to_string(i))), std::to_string(i));
}

TEST_F(Files, OpenFilesAreTrackedWithTheirPathAndTheCallersLine) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "tracking is compiled out";
    const auto path = at("tracked");
    const auto line = std::source_location::current().line() + 1;
    auto f = ctxmgr::open(path, "w");
    const auto live = ctxmgr::live_resources();
    const auto it =
        std::find_if(live.begin(), live.end(), [](const auto& r) { return r.kind == "file"; });
    ASSERT_NE(it, live.end());
    EXPECT_EQ(it->description, '"' + path.string() + '"');
    EXPECT_EQ(it->where.line(), line);
    EXPECT_NE(std::string(it->where.file_name()).find("file_test.cpp"), std::string::npos);
    f.close();
    EXPECT_TRUE(ctxmgr::live_resources().empty());
}

// --- temporary_file -------------------------------------------------------------------------

TEST_F(Files, ATemporaryFileHasAUniqueNameInTmpdirAndIsRemovedWhenItCloses) {
    fs::path first, second;
    ctxmgr::with(ctxmgr::temporary_file(), ctxmgr::temporary_file("data-"),
                 [&](ctxmgr::file& a, ctxmgr::file& b) {
                     first = a.path();
                     second = b.path();
                     EXPECT_EQ(a.path().parent_path(), tmp_);
                     EXPECT_TRUE(a.path().filename().string().starts_with("ctxmgr-"));
                     EXPECT_TRUE(b.path().filename().string().starts_with("data-"));
                     EXPECT_NE(a.path(), b.path());
                     EXPECT_EQ(mode_of(a.path()), 0600u);
                     a.write("scratch");
                     a.seek(0);
                     EXPECT_EQ(a.read_all(), "scratch");
                 });
    EXPECT_FALSE(fs::exists(first));
    EXPECT_FALSE(fs::exists(second));
    EXPECT_TRUE(entries(tmp_).empty());
}

TEST_F(Files, ATemporaryFileIsRemovedByItsDestructorAndItsRemovalMayFindItGone) {
    fs::path path;
    {
        auto f = ctxmgr::temporary_file();
        path = f.path();
    }
    EXPECT_FALSE(fs::exists(path));
    unraisable_capture capture;
    auto f = ctxmgr::temporary_file();
    fs::remove(f.path());
    EXPECT_NO_THROW(f.close());
    EXPECT_TRUE(capture.reports.empty());
}

TEST_F(Files, ATemporaryPrefixWithASlashIsInvalid) {
    EXPECT_THROW(static_cast<void>(ctxmgr::temporary_file("a/b")), std::invalid_argument);
    EXPECT_THROW(static_cast<void>(ctxmgr::temporary_directory("../x")), std::invalid_argument);
    EXPECT_TRUE(entries(tmp_).empty());
}

TEST_F(Files, AMissingTemporaryDirectoryIsAnIoError) {
    ::setenv("TMPDIR", at("no-such-directory").c_str(), 1);
    EXPECT_THROW(static_cast<void>(ctxmgr::temporary_file()), ctxmgr::io_error);
    EXPECT_THROW(static_cast<void>(ctxmgr::temporary_directory()), ctxmgr::io_error);
}

// --- temporary_directory --------------------------------------------------------------------

TEST_F(Files, ATemporaryDirectoryIsRemovedWithEverythingInIt) {
    put(at("outside"), "must survive");
    fs::path seen;
    ctxmgr::with(ctxmgr::temporary_directory("work-"), [&](const fs::path& directory) {
        seen = directory;
        EXPECT_EQ(directory.parent_path(), tmp_);
        EXPECT_TRUE(directory.filename().string().starts_with("work-"));
        EXPECT_EQ(mode_of(directory), 0700u);
        fs::create_directories(directory / "a" / "b");
        put(directory / "a" / "b" / "file", "x");
        fs::create_symlink(at("outside"), directory / "link");
        fs::create_directory_symlink(dir_, directory / "dir-link");
    });
    EXPECT_FALSE(fs::exists(seen));
    EXPECT_EQ(contents(at("outside")), "must survive");  // links are removed, not followed
}

TEST_F(Files, ATemporaryDirectoryIsRemovedWhenTheBodyThrows) {
    fs::path seen;
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(ctxmgr::temporary_directory(), [&](const fs::path& directory) {
            seen = directory;
            put(directory / "f", "x");
            throw_recorded(thrown);
        });
    });
    EXPECT_EQ(e, thrown);
    EXPECT_FALSE(fs::exists(seen));
}

TEST_F(Files, ATemporaryDirectoryRemovesEntriesItHadNoPermissionFor) {
    // As root nothing lacks permission: the child becomes nobody.
    ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
    ASSERT_EQ(::chmod(tmp_.c_str(), 0777), 0);
    EXPECT_TRUE(in_child([&] {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) return false;
        ctxmgr::temporary_directory directory;
        const auto locked = directory.path() / "locked";
        fs::create_directories(locked / "deeper");
        put(locked / "deeper" / "file", "x");
        ::chmod((locked / "deeper").c_str(), 0500);
        ::chmod(locked.c_str(), 0);
        directory.remove();
        return !fs::exists(directory.path());
    }));
    EXPECT_TRUE(entries(tmp_).empty());
}

// chattr +i: not even root may remove the entry, which is how these tests make a removal fail.
bool set_immutable(const fs::path& path, bool immutable) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return false;
    int flags = 0;
    bool ok = ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
    if (ok) {
        flags = immutable ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
        ok = ::ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
    }
    ::close(fd);
    return ok;
}

TEST_F(Files, ATemporaryDirectoryThatCannotBeRemovedThrowsOnceAndItsDestructorReports) {
    unraisable_capture capture;
    fs::path stuck;
    {
        ctxmgr::temporary_directory directory;
        stuck = directory.path() / "stuck";
        put(stuck, "x");
        if (!set_immutable(stuck, true)) {
            GTEST_SKIP() << "cannot make a file immutable here (needs CAP_LINUX_IMMUTABLE and a "
                            "file system with the flag)";
        }
        const auto error = io_error_from([&] { directory.remove(); });
        ASSERT_TRUE(error);
        EXPECT_EQ(error->code().value(), EPERM);
        EXPECT_EQ(error->path(), directory.path().string());
        EXPECT_TRUE(directory.removed());
        EXPECT_NO_THROW(directory.remove());  // reported once, not tried again
    }
    EXPECT_TRUE(capture.reports.empty());
    set_immutable(stuck, false);
    {
        ctxmgr::temporary_directory directory;
        stuck = directory.path() / "stuck";
        put(stuck, "x");
        set_immutable(stuck, true);
    }
    ASSERT_EQ(capture.reports.size(), 1u);
    EXPECT_TRUE(capture.reports[0].starts_with("temporary directory \"" +
                                               stuck.parent_path().string() +
                                               "\": remove in destructor: remove"))
        << capture.reports[0];
    set_immutable(stuck, false);
}

TEST_F(Files, ATemporaryDirectoryIsTrackedUntilRemoved) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "tracking is compiled out";
    ctxmgr::temporary_directory directory;
    const auto live = ctxmgr::live_resources();
    ASSERT_EQ(live.size(), 1u);
    EXPECT_EQ(live[0].kind, "temporary directory");
    EXPECT_EQ(live[0].description, '"' + directory.path().string() + '"');

    directory.remove();
    EXPECT_TRUE(ctxmgr::live_resources().empty());
    EXPECT_THROW(static_cast<void>(directory.enter()), ctxmgr::closed_error);
}

// --- atomic_write ---------------------------------------------------------------------------

TEST_F(Files, AnAtomicWriteReplacesTheTargetAndLeavesNothingElse) {
    const auto target = at("config.json");
    put(target, "old contents");
    ctxmgr::with(ctxmgr::atomic_write(target), [&](ctxmgr::file& f) {
        EXPECT_EQ(f.path(), target);
        f.write("new contents");
        EXPECT_EQ(contents(target), "old contents");  // nothing shows before the commit
        f.seek(0);
        EXPECT_EQ(f.read_all(), "new contents");
    });
    EXPECT_EQ(contents(target), "new contents");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"config.json", "tmp"}));
}

TEST_F(Files, AnAtomicWriteCreatesANewTargetWithThePermissionsLessTheUmask) {
    ctxmgr::open_options options;
    options.permissions = fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read;
    ctxmgr::with(ctxmgr::atomic_write(at("new"), options), [](ctxmgr::file& f) { f.write("n"); });
    EXPECT_EQ(contents(at("new")), "n");
    EXPECT_EQ(mode_of(at("new")), 0640 & ~current_umask());
}

TEST_F(Files, AReplacedFileKeepsItsPermissionBits) {
    for (const mode_t bits : {0640u, 0755u, 0400u, 0606u}) {
        const auto target = at("perm");
        put(target, "old");
        ASSERT_EQ(::chmod(target.c_str(), bits), 0);
        ctxmgr::with(ctxmgr::atomic_write(target), [](ctxmgr::file& f) { f.write("new"); });
        EXPECT_EQ(mode_of(target), bits);
        EXPECT_EQ(contents(target), "new");
    }
}

TEST_F(Files, AnExceptionLeavesTheTargetUntouchedAndRemovesTheTemporary) {
    const auto target = at("keep");
    put(target, "old contents");
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(ctxmgr::atomic_write(target), [&](ctxmgr::file& f) {
            f.write(std::string(1 << 20, 'n'));
            throw_recorded(thrown);
        });
    });
    EXPECT_EQ(e, thrown);
    EXPECT_EQ(contents(target), "old contents");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"keep", "tmp"}));
}

TEST_F(Files, AnAtomicWriteWithoutOTmpfileUsesAHiddenNameAndRemovesIt) {
    injected::refuse_tmpfile = true;
    const auto target = at("fallback");
    put(target, "old");
    {
        ctxmgr::atomic_write write(target);
        const auto names = entries(dir_);
        ASSERT_EQ(names.size(), 3u);
        EXPECT_TRUE(names[0].starts_with(".fallback.") && names[0].ends_with(".tmp")) << names[0];
        EXPECT_EQ(mode_of(dir_ / names[0]), mode_of(target));
        write.enter().write("new");
        write.commit();
    }
    EXPECT_EQ(contents(target), "new");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"fallback", "tmp"}));
    {
        ctxmgr::atomic_write write(target);
        write.enter().write("discarded");
    }
    EXPECT_EQ(contents(target), "new");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"fallback", "tmp"}));
}

TEST_F(Files, ASymbolicLinkIsReplacedNotFollowed) {
    put(at("real"), "real contents");
    fs::create_symlink(at("real"), at("link"));
    ctxmgr::with(ctxmgr::atomic_write(at("link")), [](ctxmgr::file& f) { f.write("new"); });
    EXPECT_FALSE(fs::is_symlink(at("link")));
    EXPECT_EQ(contents(at("link")), "new");
    EXPECT_EQ(contents(at("real")), "real contents");
}

TEST_F(Files, CommitAndDiscardAreIdempotentAndFinal) {
    const auto target = at("final");
    ctxmgr::atomic_write committed(target);
    committed.enter().write("1");
    committed.commit();
    EXPECT_TRUE(committed.committed());
    EXPECT_NO_THROW(committed.commit());
    EXPECT_NO_THROW(committed.discard());  // too late: the target was replaced
    EXPECT_EQ(contents(target), "1");
    EXPECT_THROW(static_cast<void>(committed.enter()), ctxmgr::closed_error);

    ctxmgr::atomic_write discarded(target);
    discarded.enter().write("2");
    discarded.discard();
    EXPECT_NO_THROW(discarded.discard());
    EXPECT_THROW(discarded.commit(), ctxmgr::closed_error);
    EXPECT_THROW(static_cast<void>(discarded.enter()), ctxmgr::closed_error);
    EXPECT_FALSE(discarded.committed());
    EXPECT_EQ(contents(target), "1");
}

TEST_F(Files, AnAtomicWriteDestroyedWithoutCommitDiscards) {
    const auto target = at("abandoned");
    put(target, "old");
    {
        ctxmgr::atomic_write write(target);
        write.enter().write("never committed");
    }
    EXPECT_EQ(contents(target), "old");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"abandoned", "tmp"}));
}

TEST_F(Files, ClosingTheFileBeforeTheCommitIsAnErrorAndTheTargetIsUntouched) {
    const auto target = at("closed-early");
    put(target, "old");
    EXPECT_THROW(ctxmgr::with(ctxmgr::atomic_write(target),
                              [](ctxmgr::file& f) {
                                  f.write("new");
                                  f.close();
                              }),
                 ctxmgr::closed_error);
    EXPECT_EQ(contents(target), "old");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"closed-early", "tmp"}));
}

TEST_F(Files, AFailedFsyncIsNeverRetriedNorFollowedByTheRename) {
    const auto target = at("fsync-fails");
    put(target, "old");
    injected::fsync_fail_call = 1;
    const auto error = io_error_from([&] {
        ctxmgr::with(ctxmgr::atomic_write(target), [](ctxmgr::file& f) { f.write("new"); });
    });
    ASSERT_TRUE(error);
    EXPECT_EQ(std::string(error->what()), "fsync \"" + target.string() + "\": " + message(EIO));
    EXPECT_EQ(injected::fsync_fds.size(), 1u);  // not retried, and no directory fsync
    EXPECT_EQ(contents(target), "old");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"fsync-fails", "tmp"}));
}

TEST_F(Files, AFailedFsyncOfTheNamedTemporaryRemovesItToo) {
    injected::refuse_tmpfile = true;
    injected::fsync_fail_call = 1;
    const auto target = at("named-fsync-fails");
    put(target, "old");
    EXPECT_THROW(
        ctxmgr::with(ctxmgr::atomic_write(target), [](ctxmgr::file& f) { f.write("new"); }),
        ctxmgr::io_error);
    EXPECT_EQ(contents(target), "old");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"named-fsync-fails", "tmp"}));
}

TEST_F(Files, AFailedCloseOfTheTemporaryLeavesTheTargetUntouched) {
    const auto target = at("close-fails");
    put(target, "old");
    const auto error = io_error_from([&] {
        ctxmgr::with(ctxmgr::atomic_write(target), [](ctxmgr::file& f) {
            f.write("new");
            injected::close_fd = f.native_handle();
            injected::close_failures = 1;
        });
    });
    ASSERT_TRUE(error);
    EXPECT_EQ(std::string(error->what()), "close \"" + target.string() + "\": " + message(EIO));
    EXPECT_EQ(injected::close_calls, 1);
    EXPECT_EQ(contents(target), "old");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"close-fails", "tmp"}));
}

TEST_F(Files, AFailedDirectoryFsyncIsReportedAfterTheRename) {
    const auto target = at("dir-fsync-fails");
    put(target, "old");
    injected::fsync_fail_call = 2;
    const auto error = io_error_from([&] {
        ctxmgr::with(ctxmgr::atomic_write(target), [](ctxmgr::file& f) { f.write("new"); });
    });
    ASSERT_TRUE(error);
    EXPECT_EQ(std::string(error->what()),
              "fsync directory \"" + dir_.string() + "\": " + message(EIO));
    EXPECT_EQ(contents(target), "new");  // in place, but maybe not durable
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"dir-fsync-fails", "tmp"}));
}

TEST_F(Files, ACommitFsyncsTheDataThenTheDirectory) {
    const auto target = at("order");
    ctxmgr::atomic_write write(target);
    const int data = write.enter().native_handle();
    write.enter().write("x");
    injected::fsync_fds.clear();
    write.commit();
    ASSERT_EQ(injected::fsync_fds.size(), 2u);
    EXPECT_EQ(injected::fsync_fds[0], data);
    EXPECT_NE(injected::fsync_fds[1], data);
}

TEST_F(Files, AFailedRenameLeavesTheTargetAndRemovesTheTemporary) {
    // A directory where the target should be: rename(2) refuses to replace it with a file.
    // The constructor already refuses it, so the directory appears after the temporary.
    const auto target = at("became-a-directory");
    ctxmgr::atomic_write write(target);
    write.enter().write("new");
    fs::create_directory(target);
    put(target / "inside", "x");
    const auto error = io_error_from([&] { write.commit(); });
    ASSERT_TRUE(error);
    EXPECT_EQ(error->code().value(), EISDIR);
    EXPECT_TRUE(std::string(error->what()).starts_with("rename \"" + target.string() + "\""));
    EXPECT_EQ(contents(target / "inside"), "x");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"became-a-directory", "tmp"}));
    EXPECT_THROW(write.commit(), ctxmgr::closed_error);
}

TEST_F(Files, AnAtomicWriteToADirectoryOrAMissingDirectoryIsAnIoError) {
    const auto is_directory = io_error_from([&] { ctxmgr::atomic_write write(tmp_); });
    ASSERT_TRUE(is_directory);
    EXPECT_EQ(is_directory->code().value(), EISDIR);
    const auto missing = io_error_from([&] { ctxmgr::atomic_write write(at("none") / "file"); });
    ASSERT_TRUE(missing);
    EXPECT_EQ(missing->code().value(), ENOENT);
    EXPECT_EQ(std::string(missing->what()),
              "open directory \"" + at("none").string() + "\": " + message(ENOENT));
}

TEST_F(Files, AnAtomicWriteInTheWorkingDirectory) {
    const auto back = fs::current_path();
    fs::current_path(dir_);
    ctxmgr::with(ctxmgr::atomic_write("relative"), [](ctxmgr::file& f) { f.write("here"); });
    fs::current_path(back);
    EXPECT_EQ(contents(at("relative")), "here");
}

TEST_F(Files, AnAtomicWriteThatCannotRemoveItsTemporaryChainsTheFailure) {
    injected::refuse_tmpfile = true;  // a named temporary, so that there is something to remove
    const auto target = at("stuck");
    put(target, "old");
    ctxmgr::atomic_write write(target);
    write.enter().write("new");
    const auto names = entries(dir_);
    const auto temporary = std::find_if(
        names.begin(), names.end(), [](const std::string& n) { return n.starts_with(".stuck."); });
    ASSERT_NE(temporary, names.end());
    if (!set_immutable(dir_ / *temporary, true)) {
        write.discard();
        GTEST_SKIP() << "cannot make a file immutable here";
    }
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        try {
            throw_recorded(thrown);
        } catch (...) {
            write.exit(std::current_exception());
        }
    });
    set_immutable(dir_ / *temporary, false);
    fs::remove(dir_ / *temporary);
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::io_error& error) {
        EXPECT_EQ(std::string(error.what()),
                  "remove \"" + (dir_ / *temporary).string() + "\": " + message(EPERM));
        const auto* nested = dynamic_cast<const std::nested_exception*>(&error);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), thrown);
    }
    EXPECT_EQ(contents(target), "old");
}

TEST_F(Files, AnAtomicWriteIsTrackedUntilCommittedAndMovesAsOne) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "tracking is compiled out";
    const auto target = at("tracked");
    const auto line = std::source_location::current().line() + 1;
    ctxmgr::atomic_write write(target);
    auto live = ctxmgr::live_resources();
    ASSERT_EQ(live.size(), 1u);  // one entry: the temporary inside is not listed apart
    EXPECT_EQ(live[0].kind, "atomic write");
    EXPECT_EQ(live[0].description, '"' + target.string() + '"');
    EXPECT_EQ(live[0].where.line(), line);
    ctxmgr::atomic_write moved(std::move(write));
    EXPECT_EQ(ctxmgr::live_resources().size(), 1u);
    moved.enter().write("m");
    moved.commit();
    EXPECT_TRUE(ctxmgr::live_resources().empty());
    EXPECT_EQ(contents(target), "m");
}

TEST_F(Files, MoveAssigningAnAtomicWriteDiscardsTheOneItReplaces) {
    put(at("a"), "old a");
    ctxmgr::atomic_write write(at("a"));
    write.enter().write("new a");
    write = ctxmgr::atomic_write(at("b"));
    write.enter().write("new b");
    write.commit();
    EXPECT_EQ(contents(at("a")), "old a");
    EXPECT_EQ(contents(at("b")), "new b");
    EXPECT_EQ(entries(dir_), (std::vector<std::string>{"a", "b", "tmp"}));
}

// A process killed at random moments while it rewrites a large file, 200 times: after each,
// the target holds the old or the new contents in full.
TEST_F(Files, AProcessKilledAtAnyMomentLeavesTheOldOrTheNewContentsNeverAMix) {
    const auto target = at("data.bin");
    const std::string a(1 << 20, 'a');
    const std::string b(3 << 19, 'b');
    put(target, a);
    // The kills should land before, during and after commits: spread them over a few.
    const auto start = std::chrono::steady_clock::now();
    ctxmgr::with(ctxmgr::atomic_write(target), [&](ctxmgr::file& f) { f.write(b); });
    const auto one_commit = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - start);
    const auto seed = std::random_device()();
    std::mt19937 random(seed);
    std::uniform_int_distribution<long> delay(0, std::max<long>(3 * one_commit.count(), 2000));
    int changed = 0;
    std::string before = contents(target);
    for (int i = 0; i < 200; ++i) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            for (unsigned k = 0;; ++k) {
                try {
                    ctxmgr::with(ctxmgr::atomic_write(target),
                                 [&](ctxmgr::file& f) { f.write(k % 2 == 0 ? a : b); });
                } catch (...) {
                    ::_exit(1);
                }
            }
        }
        std::this_thread::sleep_for(std::chrono::microseconds(delay(random)));
        ::kill(pid, SIGKILL);
        int status = 0;
        ::waitpid(pid, &status, 0);
        ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
            << "the writer failed on its own, status " << status;
        const std::string now = contents(target);
        ASSERT_TRUE(now == a || now == b)
            << "kill " << i << " (seed " << seed << ") left " << now.size() << " bytes, a mix";
        changed += now != before;
        before = now;
    }
    // Some kills came after a commit, some before: both outcomes were exercised.
    EXPECT_GT(changed, 0);
    EXPECT_LT(changed, 200);
    // A kill between the link and the rename may leave a hidden temporary, nothing else.
    for (const auto& name : entries(dir_)) {
        if (name == "data.bin" || name == "tmp") continue;
        EXPECT_TRUE(name.starts_with(".data.bin.") && name.ends_with(".tmp")) << name;
    }
}

// --- system-call traces ---------------------------------------------------------------------

// From a line of strace: the number in parentheses after `call(`, or what the call returned
// (after the last " = "); empty if there is none.
std::string first_argument(const std::string& line, std::string_view call) {
    const auto at = line.find(std::string(call) + '(');
    if (at == std::string::npos) return "";
    const auto begin = at + call.size() + 1;
    return line.substr(begin, line.find_first_not_of("0123456789", begin) - begin);
}

std::string result(const std::string& line) {
    const auto at = line.rfind(" = ");
    if (at == std::string::npos) return "";
    return line.substr(at + 3, line.find_first_not_of("0123456789", at + 3) - (at + 3));
}

using ctxmgr::testing::contains;

bool strace_works(const fs::path& scratch) {
    return exited_with(run({"strace", "-o", "/dev/null", "true"}, scratch / "strace-check"), 0);
}

TEST_F(Files, TheSystemCallTraceShowsDataFsyncRenameDirectoryFsyncInThatOrder) {
    if (!strace_works(dir_)) GTEST_SKIP() << "strace is missing or cannot trace here";
    const auto target = at("traced");
    put(target, "old");
    const auto trace = at("trace.txt");
    const int status = run({"strace", "-f", "-qq", "-o", trace.string(), "-e",
                            "trace=openat,fsync,fdatasync,sync_file_range,linkat,rename,renameat,"
                            "renameat2,close",
                            CTXMGR_ATOMIC_WRITE_CHILD, target.string(), "100000"},
                           at("output.txt"));
    ASSERT_TRUE(exited_with(status, 0)) << contents(at("output.txt"));
    EXPECT_EQ(contents(target), std::string(100000, 'n'));

    // openat(AT_FDCWD, "<dir>", O_RDONLY|O_CLOEXEC|O_DIRECTORY) = 3
    // openat(3, ".", O_RDWR|O_CLOEXEC|O_TMPFILE, 0666) = 4
    // fsync(4) = 0 ... renameat(3, ".traced.x.tmp", 3, "traced") = 0 ... fsync(3) = 0
    std::string directory_fd, data_fd;
    std::vector<std::string> events;
    std::istringstream lines(contents(trace));
    for (std::string line; std::getline(lines, line);) {
        if (contains(line, "openat(AT_FDCWD, \"" + dir_.string() + "\", ") &&
            contains(line, "O_DIRECTORY")) {
            directory_fd = result(line);
        } else if (!directory_fd.empty() && data_fd.empty() &&
                   contains(line, "openat(" + directory_fd + ", ") && contains(line, "O_RDWR")) {
            data_fd = result(line);
        } else if (contains(line, "sync")) {
            std::string fd = first_argument(line, "fsync");
            if (fd.empty()) fd = first_argument(line, "fdatasync");
            if (fd.empty()) fd = first_argument(line, "sync_file_range");
            events.push_back(fd == data_fd        ? "fsync data"
                             : fd == directory_fd ? "fsync directory"
                                                  : "sync of fd " + fd + ": " + line);
        } else if (contains(line, "rename") && contains(line, "\"traced\")")) {
            events.push_back("rename");
        }
    }
    ASSERT_FALSE(directory_fd.empty()) << contents(trace);
    ASSERT_FALSE(data_fd.empty()) << contents(trace);
    EXPECT_EQ(events, (std::vector<std::string>{"fsync data", "rename", "fsync directory"}))
        << contents(trace);
}

TEST_F(Files, AnFsyncFailingWithEioUnderStraceLeavesTheTargetUntouched) {
    if (!strace_works(dir_)) GTEST_SKIP() << "strace is missing or cannot trace here";
    const auto target = at("injected");
    put(target, "old");
    const int status =
        run({"strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync", "-e",
             "inject=fsync:error=EIO:when=1", CTXMGR_ATOMIC_WRITE_CHILD, target.string(), "100000"},
            at("output.txt"));
    EXPECT_TRUE(exited_with(status, 3)) << contents(at("output.txt"));
    EXPECT_EQ(contents(at("output.txt")), "io_error " + std::to_string(EIO) + " fsync \"" +
                                              target.string() + "\": " + message(EIO) + '\n');
    EXPECT_EQ(contents(target), "old");
    EXPECT_EQ(entries(dir_),
              (std::vector<std::string>{"injected", "output.txt", "strace-check", "tmp"}));
}

}  // namespace
