// Instruction counts of async_with against the hand-written coroutine code it replaces:
//   async_instructions <kernel> [iterations]
// Each iteration runs one coroutine on an io_context that enters and exits a manager
// `withs_per_run` times around a body coroutine, so the io_context's own cost is spread over
// many withs; bench/instructions compares a kernel with its baseline:
//   bench/instructions build/default/bench/async_instructions async_with_trivial
//   handwritten_async_trivial
#include <ctxmgr/async_with.hpp>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>

#include <exception>

#include "instructions_main.hpp"

#define CTXMGR_KERNEL __attribute__((noinline))

namespace kernels {

constexpr int withs_per_run = 100;

struct counter {
    int entered = 0;
    int exited = 0;
    void enter() noexcept { ++entered; }
    void exit(std::exception_ptr e) noexcept {
        if (!e) ++exited;
    }
};

// The same manager with both halves asynchronous (and trivial).
struct async_counter {
    int entered = 0;
    int exited = 0;
    asio::awaitable<void> async_enter() {
        ++entered;
        co_return;
    }
    asio::awaitable<void> async_exit(std::exception_ptr e) {
        if (!e) ++exited;
        co_return;
    }
};

inline asio::awaitable<void> body(int& work) {
    ++work;
    co_return;
}

// Runs loop() as a coroutine spawned with `slot` as its cancellation slot: by default one
// connected to nothing, so that nothing can cancel it.
template <class Loop>
void run_once(asio::io_context& io, Loop loop,
              asio::cancellation_slot slot = asio::cancellation_slot()) {
    asio::co_spawn(io, loop(), asio::bind_cancellation_slot(slot, asio::detached));
    io.restart();
    io.run();
}

CTXMGR_KERNEL void async_with_trivial(asio::io_context& io, counter& m, int& work) {
    run_once(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < withs_per_run; ++i) {
            co_await ctxmgr::async_with(m, [&] { return body(work); });
        }
    });
}

CTXMGR_KERNEL void handwritten_async_trivial(asio::io_context& io, counter& m, int& work) {
    run_once(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < withs_per_run; ++i) {
            m.enter();
            std::exception_ptr pending;
            try {
                co_await body(work);
            } catch (...) {
                pending = std::current_exception();
            }
            if (pending) {
                try {
                    std::rethrow_exception(pending);
                } catch (...) {
                    m.exit(pending);
                    throw;
                }
            }
            m.exit(nullptr);
        }
    });
}

CTXMGR_KERNEL void async_with_async_manager(asio::io_context& io, async_counter& m, int& work) {
    run_once(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < withs_per_run; ++i) {
            co_await ctxmgr::async_with(m, [&] { return body(work); });
        }
    });
}

// The same from a coroutine that could be cancelled (a cancellation slot is bound to its spawn,
// never emitted): async_with shields the exit in a thread of execution of its own.
CTXMGR_KERNEL void async_with_async_manager_cancellable(asio::io_context& io, async_counter& m,
                                                        int& work) {
    asio::cancellation_signal never;
    run_once(
        io,
        [&]() -> asio::awaitable<void> {
            for (int i = 0; i < withs_per_run; ++i) {
                co_await ctxmgr::async_with(m, [&] { return body(work); });
            }
        },
        never.slot());
}

// Without shielding: the exit is awaited in the caller's thread of execution.
CTXMGR_KERNEL void handwritten_async_manager(asio::io_context& io, async_counter& m, int& work) {
    run_once(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < withs_per_run; ++i) {
            co_await m.async_enter();
            std::exception_ptr pending;
            try {
                co_await body(work);
            } catch (...) {
                pending = std::current_exception();
            }
            co_await m.async_exit(pending);
            if (pending) std::rethrow_exception(pending);
        }
    });
}

CTXMGR_KERNEL void handwritten_async_manager_cancellable(asio::io_context& io, async_counter& m,
                                                         int& work) {
    asio::cancellation_signal never;
    run_once(
        io,
        [&]() -> asio::awaitable<void> {
            for (int i = 0; i < withs_per_run; ++i) {
                co_await m.async_enter();
                std::exception_ptr pending;
                try {
                    co_await body(work);
                } catch (...) {
                    pending = std::current_exception();
                }
                co_await m.async_exit(pending);
                if (pending) std::rethrow_exception(pending);
            }
        },
        never.slot());
}

// The floors: the hand-written code above moved into a coroutine of its own, as any function
// that wraps a body must be on Asio (whose coroutines await nothing but its own awaitable: the
// code around the body's co_await is a frame of Asio's), and, for a caller that can be
// cancelled, its exit spawned into a thread of execution whose cancellation slot is connected
// to nothing, the least Asio 1.22 offers that keeps the caller's cancellation from the exit.
inline asio::awaitable<void> trivial_in_a_frame(counter& m, int& work) {
    m.enter();
    std::exception_ptr pending;
    try {
        co_await body(work);
    } catch (...) {
        pending = std::current_exception();
    }
    if (pending) {
        try {
            std::rethrow_exception(pending);
        } catch (...) {
            m.exit(pending);
            throw;
        }
    }
    m.exit(nullptr);
}

CTXMGR_KERNEL void handwritten_frame_trivial(asio::io_context& io, counter& m, int& work) {
    run_once(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < withs_per_run; ++i) co_await trivial_in_a_frame(m, work);
    });
}

inline asio::awaitable<void> async_manager_in_a_frame(async_counter& m, int& work) {
    co_await m.async_enter();
    std::exception_ptr pending;
    try {
        co_await body(work);
    } catch (...) {
        pending = std::current_exception();
    }
    co_await m.async_exit(pending);
    if (pending) std::rethrow_exception(pending);
}

CTXMGR_KERNEL void handwritten_frame_async_manager(asio::io_context& io, async_counter& m,
                                                   int& work) {
    run_once(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < withs_per_run; ++i) co_await async_manager_in_a_frame(m, work);
    });
}

inline asio::awaitable<void> shielded_in_a_frame(async_counter& m, int& work) {
    co_await m.async_enter();
    std::exception_ptr pending;
    try {
        co_await body(work);
    } catch (...) {
        pending = std::current_exception();
    }
    auto executor = co_await asio::this_coro::executor;
    co_await asio::co_spawn(
        executor, m.async_exit(pending),
        asio::bind_cancellation_slot(asio::cancellation_slot(), asio::use_awaitable));
    if (pending) std::rethrow_exception(pending);
}

CTXMGR_KERNEL void handwritten_frame_shielded_cancellable(asio::io_context& io, async_counter& m,
                                                          int& work) {
    asio::cancellation_signal never;
    run_once(
        io,
        [&]() -> asio::awaitable<void> {
            for (int i = 0; i < withs_per_run; ++i) co_await shielded_in_a_frame(m, work);
        },
        never.slot());
}

}  // namespace kernels

int main(int argc, char** argv) {
    asio::io_context io;
    kernels::counter m;
    kernels::async_counter a;
    int work = 0;
    const kernels::kernel_cases cases = {
        {"async_with_trivial", [&] { kernels::async_with_trivial(io, m, work); }},
        {"handwritten_async_trivial", [&] { kernels::handwritten_async_trivial(io, m, work); }},
        {"async_with_async_manager", [&] { kernels::async_with_async_manager(io, a, work); }},
        {"handwritten_async_manager", [&] { kernels::handwritten_async_manager(io, a, work); }},
        {"async_with_async_manager_cancellable",
         [&] { kernels::async_with_async_manager_cancellable(io, a, work); }},
        {"handwritten_async_manager_cancellable",
         [&] { kernels::handwritten_async_manager_cancellable(io, a, work); }},
        {"handwritten_frame_trivial", [&] { kernels::handwritten_frame_trivial(io, m, work); }},
        {"handwritten_frame_async_manager",
         [&] { kernels::handwritten_frame_async_manager(io, a, work); }},
        {"handwritten_frame_shielded_cancellable",
         [&] { kernels::handwritten_frame_shielded_cancellable(io, a, work); }},
    };
    return kernels::run_kernel(argc, argv, cases, work);
}
