// File benchmarks: 10 million short lines written and read back with ctxmgr::file, next to
// std::ofstream / std::ifstream, stdio (fwrite / fgets) and hand-written write(2) / read(2),
// every one with the same 64 KiB buffer, in the same run; and read_all next to read(2).
//
// The files go to $CTXMGR_BENCH_DIR, else /dev/shm (tmpfs: the page cache without a disk
// behind it, so that writeback does not blur the figures), else the temporary directory.
// Reproduce: see docs/performance.md.
#include <benchmark/benchmark.h>

#include <ctxmgr/file.hpp>
#include <ctxmgr/with.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>

namespace {

namespace fs = std::filesystem;

constexpr std::size_t line_count = 10'000'000;
constexpr std::size_t buffer_size = 64 * 1024;

// 1024 different short lines ("line 4521837\n", 7 to 13 bytes), used in turn: no formatting
// in the measured loops, and the text is in L1 for every contender alike.
const std::array<std::string, 1024>& lines() {
    static const auto all = [] {
        std::array<std::string, 1024> out;
        for (std::size_t i = 0; i < out.size(); ++i) {
            out[i] = "line " + std::to_string(i * 7919 % 10'000'000) + '\n';
        }
        return out;
    }();
    return all;
}

std::size_t total_bytes() {
    static const std::size_t bytes = [] {
        std::size_t sum = 0;
        for (std::size_t i = 0; i < line_count; ++i) sum += lines()[i % 1024].size();
        return sum;
    }();
    return bytes;
}

fs::path bench_directory() {
    if (const char* chosen = std::getenv("CTXMGR_BENCH_DIR")) return chosen;
    if (::access("/dev/shm", W_OK) == 0) return "/dev/shm";
    return fs::temp_directory_path();
}

const fs::path& written_path() {
    static const fs::path path =
        bench_directory() / ("ctxmgr-file-bench-" + std::to_string(::getpid()) + "-written");
    return path;
}

// The file the read benchmarks read: the same 10 million lines.
const fs::path& lines_path() {
    static const fs::path path = [] {
        fs::path p =
            bench_directory() / ("ctxmgr-file-bench-" + std::to_string(::getpid()) + "-lines");
        std::ofstream out(p, std::ios::binary);
        for (std::size_t i = 0; i < line_count; ++i) out << lines()[i % 1024];
        return p;
    }();
    return path;
}

void finish(benchmark::State& state, std::size_t bytes) {
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes));
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(line_count));
}

// --- writing --------------------------------------------------------------------------------

void write_ctxmgr(benchmark::State& state) {
    ctxmgr::open_options options;
    options.buffer_size = buffer_size;
    const auto& text = lines();
    for (auto _ : state) {
        ctxmgr::with(ctxmgr::open(written_path(), "w", options), [&](ctxmgr::file& f) {
            for (std::size_t i = 0; i < line_count; ++i) f.write(text[i % 1024]);
        });
    }
    finish(state, total_bytes());
}

void write_ofstream(benchmark::State& state) {
    const auto& text = lines();
    auto buffer = std::make_unique<char[]>(buffer_size);
    for (auto _ : state) {
        std::ofstream out;
        out.rdbuf()->pubsetbuf(buffer.get(), buffer_size);  // before open, for libstdc++
        out.open(written_path(), std::ios::binary | std::ios::trunc);
        for (std::size_t i = 0; i < line_count; ++i) {
            const auto& line = text[i % 1024];
            out.write(line.data(), static_cast<std::streamsize>(line.size()));
        }
        out.close();
        if (!out) state.SkipWithError("ofstream failed");
    }
    finish(state, total_bytes());
}

void write_stdio(benchmark::State& state) {
    const auto& text = lines();
    // glibc ignores setvbuf's size without a buffer (it takes st_blksize): give it one.
    auto buffer = std::make_unique<char[]>(buffer_size);
    for (auto _ : state) {
        std::FILE* out = std::fopen(written_path().c_str(), "w");
        std::setvbuf(out, buffer.get(), _IOFBF, buffer_size);
        for (std::size_t i = 0; i < line_count; ++i) {
            const auto& line = text[i % 1024];
            std::fwrite(line.data(), 1, line.size(), out);
        }
        if (std::fclose(out) != 0) state.SkipWithError("fclose failed");
    }
    finish(state, total_bytes());
}

// What a careful programmer writes by hand: copy into a buffer, write(2) it when full.
void write_raw(benchmark::State& state) {
    const auto& text = lines();
    auto buffer = std::make_unique<char[]>(buffer_size);
    for (auto _ : state) {
        const int fd =
            ::open(written_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        std::size_t used = 0;
        auto flush = [&] {
            for (std::size_t done = 0; done < used;) {
                const ssize_t n = ::write(fd, buffer.get() + done, used - done);
                if (n <= 0) return false;
                done += static_cast<std::size_t>(n);
            }
            used = 0;
            return true;
        };
        bool ok = true;
        for (std::size_t i = 0; i < line_count; ++i) {
            const auto& line = text[i % 1024];
            if (buffer_size - used < line.size()) ok = ok && flush();
            std::memcpy(buffer.get() + used, line.data(), line.size());
            used += line.size();
        }
        ok = ok && flush();
        if (::close(fd) != 0 || !ok) state.SkipWithError("write failed");
    }
    finish(state, total_bytes());
}

// --- reading line by line -------------------------------------------------------------------

void lines_ctxmgr(benchmark::State& state) {
    ctxmgr::open_options options;
    options.buffer_size = buffer_size;
    for (auto _ : state) {
        std::size_t bytes = 0;
        ctxmgr::with(ctxmgr::open(lines_path(), "r", options), [&](ctxmgr::file& f) {
            for (const std::string& line : f.lines()) bytes += line.size();
        });
        benchmark::DoNotOptimize(bytes);
    }
    finish(state, total_bytes());
}

void lines_ifstream(benchmark::State& state) {
    auto buffer = std::make_unique<char[]>(buffer_size);
    for (auto _ : state) {
        std::size_t bytes = 0;
        std::ifstream in;
        in.rdbuf()->pubsetbuf(buffer.get(), buffer_size);
        in.open(lines_path(), std::ios::binary);
        for (std::string line; std::getline(in, line);) bytes += line.size() + 1;
        benchmark::DoNotOptimize(bytes);
    }
    finish(state, total_bytes());
}

void lines_stdio(benchmark::State& state) {
    auto buffer = std::make_unique<char[]>(buffer_size);
    for (auto _ : state) {
        std::size_t bytes = 0;
        std::FILE* in = std::fopen(lines_path().c_str(), "r");
        std::setvbuf(in, buffer.get(), _IOFBF, buffer_size);
        char line[256];
        while (std::fgets(line, sizeof line, in) != nullptr) bytes += std::strlen(line);
        std::fclose(in);
        benchmark::DoNotOptimize(bytes);
    }
    finish(state, total_bytes());
}

// By hand: read(2) into a buffer, split at '\n' with memchr, carry a line cut by the buffer's
// end over in a std::string (as lines() does), hand each line out as a string.
void lines_raw(benchmark::State& state) {
    auto buffer = std::make_unique<char[]>(buffer_size);
    for (auto _ : state) {
        std::size_t bytes = 0;
        const int fd = ::open(lines_path().c_str(), O_RDONLY | O_CLOEXEC);
        std::string line;
        bool partial = false;
        for (ssize_t n; (n = ::read(fd, buffer.get(), buffer_size)) > 0;) {
            const char* p = buffer.get();
            const char* end = p + n;
            while (p < end) {
                const auto* newline = static_cast<const char*>(
                    std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
                const char* stop = newline != nullptr ? newline + 1 : end;
                if (!partial) line.clear();
                line.append(p, static_cast<std::size_t>(stop - p));
                partial = newline == nullptr;
                if (!partial) bytes += line.size();
                p = stop;
            }
        }
        if (partial) bytes += line.size();
        ::close(fd);
        benchmark::DoNotOptimize(bytes);
    }
    finish(state, total_bytes());
}

// --- reading everything ---------------------------------------------------------------------

void read_all_ctxmgr(benchmark::State& state) {
    for (auto _ : state) {
        std::string text =
            ctxmgr::with(ctxmgr::open(lines_path()), [](ctxmgr::file& f) { return f.read_all(); });
        benchmark::DoNotOptimize(text.data());
    }
    finish(state, total_bytes());
}

// read(2) through one 64 KiB buffer: the descriptor's throughput, nothing kept.
void read_raw(benchmark::State& state) {
    auto buffer = std::make_unique<char[]>(buffer_size);
    for (auto _ : state) {
        std::size_t bytes = 0;
        const int fd = ::open(lines_path().c_str(), O_RDONLY | O_CLOEXEC);
        for (ssize_t n; (n = ::read(fd, buffer.get(), buffer_size)) > 0;) {
            bytes += static_cast<std::size_t>(n);
        }
        ::close(fd);
        benchmark::DoNotOptimize(bytes);
    }
    finish(state, total_bytes());
}

// read_all by hand: fstat, a string of that size (zero-filled: C++20's std::string cannot grow
// otherwise), read(2) straight into it.
void read_all_raw(benchmark::State& state) {
    for (auto _ : state) {
        const int fd = ::open(lines_path().c_str(), O_RDONLY | O_CLOEXEC);
        struct stat status {};
        ::fstat(fd, &status);
        std::string text(static_cast<std::size_t>(status.st_size), '\0');
        std::size_t done = 0;
        for (ssize_t n;
             done < text.size() && (n = ::read(fd, text.data() + done, text.size() - done)) > 0;) {
            done += static_cast<std::size_t>(n);
        }
        ::close(fd);
        benchmark::DoNotOptimize(text.data());
    }
    finish(state, total_bytes());
}

// What read_all does where the standard library has no resize_and_overwrite: the result
// reserved to the file's size with huge pages advised, as read_all does it, then grown 64 KiB
// at a time within that room, each piece zero-filled before read(2) writes it.
void read_all_zero_filled(benchmark::State& state) {
    constexpr std::uintptr_t huge_page = std::uintptr_t{2} << 20;
    constexpr std::size_t piece = 64 * 1024;
    for (auto _ : state) {
        const int fd = ::open(lines_path().c_str(), O_RDONLY | O_CLOEXEC);
        struct stat status {};
        ::fstat(fd, &status);
        std::string text;
        text.reserve(static_cast<std::size_t>(status.st_size) + 1);
        const auto begin = reinterpret_cast<std::uintptr_t>(text.data());
        const std::uintptr_t first = (begin + huge_page - 1) & ~(huge_page - 1);
        const std::uintptr_t last = (begin + text.capacity()) & ~(huge_page - 1);
        ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
        for (;;) {
            const std::size_t size = text.size();
            const std::size_t room = text.capacity() - size;
            const std::size_t ask = room != 0 ? std::min(room, piece) : piece;
            text.resize(size + ask);
            const ssize_t n = ::read(fd, text.data() + size, ask);
            text.resize(size + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
            if (n <= 0) break;
        }
        ::close(fd);
        benchmark::DoNotOptimize(text.data());
    }
    finish(state, total_bytes());
}

// The physical floor of "read a whole file into fresh memory the caller owns": read(2)
// straight into a new anonymous mapping, 2 MiB-aligned with transparent huge pages advised,
// so that nothing but the kernel's zeroing of new pages and the copy is paid. read_all must
// also build a std::string, which this does not.
void read_all_floor(benchmark::State& state) {
    constexpr std::size_t huge_page = std::size_t{2} << 20;
    for (auto _ : state) {
        const int fd = ::open(lines_path().c_str(), O_RDONLY | O_CLOEXEC);
        struct stat status {};
        ::fstat(fd, &status);
        const auto size = static_cast<std::size_t>(status.st_size);
        const std::size_t mapped = (size + 2 * huge_page - 1) / huge_page * huge_page;
        void* raw =
            ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) {
            state.SkipWithError("mmap failed");
            ::close(fd);
            break;
        }
        const auto address = reinterpret_cast<std::uintptr_t>(raw);
        auto* data = reinterpret_cast<char*>((address + huge_page - 1) / huge_page * huge_page);
        ::madvise(data, size, MADV_HUGEPAGE);
        std::size_t done = 0;
        for (ssize_t n; done < size && (n = ::read(fd, data + done, size - done)) > 0;) {
            done += static_cast<std::size_t>(n);
        }
        ::close(fd);
        benchmark::DoNotOptimize(data);
        benchmark::ClobberMemory();
        ::munmap(raw, mapped);
    }
    finish(state, total_bytes());
}

// read_all through stdio and iostreams, the way their users write it.
void read_all_ifstream(benchmark::State& state) {
    for (auto _ : state) {
        std::ifstream in(lines_path(), std::ios::binary);
        std::string text{std::istreambuf_iterator<char>(in), {}};
        benchmark::DoNotOptimize(text.data());
    }
    finish(state, total_bytes());
}

#define FILE_BENCHMARK(name) BENCHMARK(name)->Unit(benchmark::kMillisecond)->UseRealTime()

FILE_BENCHMARK(write_ctxmgr);
FILE_BENCHMARK(write_ofstream);
FILE_BENCHMARK(write_stdio);
FILE_BENCHMARK(write_raw);
FILE_BENCHMARK(lines_ctxmgr);
FILE_BENCHMARK(lines_ifstream);
FILE_BENCHMARK(lines_stdio);
FILE_BENCHMARK(lines_raw);
FILE_BENCHMARK(read_all_ctxmgr);
FILE_BENCHMARK(read_raw);
FILE_BENCHMARK(read_all_raw);
FILE_BENCHMARK(read_all_zero_filled);
FILE_BENCHMARK(read_all_floor);
FILE_BENCHMARK(read_all_ifstream);

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    static_cast<void>(lines_path());  // written now, outside every measurement
    std::printf("files in %s, %zu lines, %zu bytes, %zu-byte buffers\n", bench_directory().c_str(),
                line_count, total_bytes(), buffer_size);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    std::error_code ignored;
    fs::remove(written_path(), ignored);
    fs::remove(lines_path(), ignored);
    return 0;
}
