// Reading into a string's own storage (src/support/posix_support.hpp): read_appending, which
// the library compiles as C++23 to skip the zero-fill, and read_appending_zero_filled, what it
// does without C++23. Both keep what was there, grow by exactly what read(2) returned, and
// leave the string as it was when read(2) fails.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "support/posix_support.hpp"

namespace {

using read_function = ssize_t (*)(int, std::string&, std::size_t);

class ReadAppending : public testing::TestWithParam<read_function> {
  protected:
    void SetUp() override { ASSERT_EQ(::pipe2(fds_, O_CLOEXEC), 0); }
    void TearDown() override {
        if (fds_[0] >= 0) ::close(fds_[0]);
        if (fds_[1] >= 0) ::close(fds_[1]);
    }
    void put(const std::string& bytes) {
        ASSERT_EQ(::write(fds_[1], bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    }
    void end_writing() {
        ::close(fds_[1]);
        fds_[1] = -1;
    }
    ssize_t read_into(std::string& out, std::size_t n) { return GetParam()(fds_[0], out, n); }

    int fds_[2] = {-1, -1};
};

TEST_P(ReadAppending, KeepsWhatWasThereAndGrowsByWhatWasRead) {
    std::string out = "kept:";
    put("abcdef");
    // Asked for more than the pipe holds: the string grows by the 6 bytes read, not by 100.
    EXPECT_EQ(read_into(out, 100), 6);
    EXPECT_EQ(out, "kept:abcdef");
    put("gh");
    EXPECT_EQ(read_into(out, 1), 1);
    EXPECT_EQ(out, "kept:abcdefg");
}

TEST_P(ReadAppending, GrowsPastTheCapacityKeepingTheBytes) {
    std::string out(40, 'x');
    out.shrink_to_fit();
    const std::string bytes(5000, 'y');
    put(bytes);
    EXPECT_EQ(read_into(out, bytes.size()), static_cast<ssize_t>(bytes.size()));
    EXPECT_EQ(out, std::string(40, 'x') + bytes);
}

TEST_P(ReadAppending, AtTheEndReturnsZeroAndChangesNothing) {
    std::string out = "before";
    end_writing();
    EXPECT_EQ(read_into(out, 64), 0);
    EXPECT_EQ(out, "before");
}

TEST_P(ReadAppending, AFailedReadLeavesTheStringAsItWasWithErrnoSet) {
    std::string out = "before";
    out.reserve(100);
    const std::size_t capacity = out.capacity();
    errno = 0;
    EXPECT_EQ(GetParam()(fds_[1], out, 64), -1);  // the pipe's write end cannot be read
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(out, "before");
    // A failure within the capacity does not reallocate.
    EXPECT_EQ(out.capacity(), capacity);
    ASSERT_EQ(::fcntl(fds_[0], F_SETFL, O_NONBLOCK), 0);
    errno = 0;
    EXPECT_EQ(read_into(out, 1 << 20), -1);  // nothing to read yet
    EXPECT_EQ(errno, EAGAIN);
    EXPECT_EQ(out, "before");
}

// Asked for far more than a pipe holds, the zero-filled version still zeroes one pipe's worth:
// a caller that asks for all its room on every call does not zero it again each time.
TEST(ReadAppendingZeroFilled, ZeroesAtMostAPipesWorthACall) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    ASSERT_EQ(::write(fds[1], "0123456789", 10), 10);
    std::string out;
    EXPECT_EQ(ctxmgr::detail::read_appending_zero_filled(fds[0], out, std::size_t{1} << 30), 10);
    EXPECT_EQ(out, "0123456789");
    EXPECT_LE(out.capacity(), std::size_t{128} << 10);
    ::close(fds[0]);
    ::close(fds[1]);
}

// Where the build compiles read_appending.cpp as C++23 against libstdc++ 12 or later (new
// ABI), the library's read_appending must be the one without the zero-fill.
TEST(ReadAppendingBuild, TheLibrarySkipsTheZeroFillWhereItsStandardLibraryCan) {
#if CTXMGR_CXX23_MODE && defined(_GLIBCXX_RELEASE) && _GLIBCXX_RELEASE >= 12 && \
    _GLIBCXX_USE_CXX11_ABI
    EXPECT_TRUE(ctxmgr::detail::read_appending_skips_zero_fill);
#else
    GTEST_SKIP() << "no C++23 mode or no resize_and_overwrite in this standard library";
#endif
}

INSTANTIATE_TEST_SUITE_P(Library, ReadAppending, testing::Values(&ctxmgr::detail::read_appending));
INSTANTIATE_TEST_SUITE_P(ZeroFilled, ReadAppending,
                         testing::Values(&ctxmgr::detail::read_appending_zero_filled));

}  // namespace
