// Tour chapter 80: locks. `with lock:` for C++ mutexes, several at once without deadlock,
// timeouts that say what they waited for, a lock shared by processes, and the lock-order
// checker that reports a deadlock before it happens.
#include <ctxmgr/ctxmgr.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

#include "tour.hpp"

namespace {

using namespace std::chrono_literals;
using tour::say;

struct account {
    std::mutex mutex;
    long balance = 0;
};

// Both accounts at once, in the order given: a transfer one way and another the other way
// cannot deadlock, because lock(a, b) takes the pair with std::lock's algorithm.
void transfer(account& from, account& to, long amount) {
    // tour: transfer
    ctxmgr::with(ctxmgr::lock(from.mutex, to.mutex), [&] {
        from.balance -= amount;
        to.balance += amount;
    });
    // tour: end
}

void mutexes() {
    tour::show_code("transfer");
    account alice, bob;
    alice.balance = bob.balance = 1000;
    std::thread one([&] {
        for (int i = 0; i < 10000; ++i) transfer(alice, bob, 1);
    });
    std::thread other([&] {
        for (int i = 0; i < 10000; ++i) transfer(bob, alice, 1);
    });
    one.join();
    other.join();
    say("two threads, 10000 transfers each way with lock(from, to): no deadlock, balances " +
        std::to_string(alice.balance) + " + " + std::to_string(bob.balance));
    say("ctxmgr::lock(m) costs what std::scoped_lock does: the same instructions");
}

void timeouts() {
    std::timed_mutex busy;
    std::promise<void> held;
    std::promise<void> done;
    std::thread holder([&] {
        std::scoped_lock guard(busy);
        held.set_value();
        done.get_future().wait();
    });
    held.get_future().wait();
    say("lock_for(20ms, m) on a mutex another thread holds:");
    tour::show_code("lock_for");
    try {
        // tour: lock_for
        ctxmgr::with(ctxmgr::lock_for(20ms, busy), [] { say("never printed"); });
        // tour: end
    } catch (const ctxmgr::timeout_error&) {
        tour::say_exception(std::current_exception());
    }
    done.set_value();
    holder.join();
}

void file_locks() {
    const auto path = tour::scratch() / "tour.lock";
    ctxmgr::with(ctxmgr::file_lock(path), [&](ctxmgr::file_lock& held) {
        say("holding the exclusive file lock " + held.path().filename().string() +
            "; a child process tries it for 20 ms:");
        std::fflush(stdout);  // the child must not print the parent's buffered output again
        const pid_t child = ::fork();
        if (child == 0) {
            int code = 1;
            try {
                ctxmgr::with(ctxmgr::file_lock(path, ctxmgr::lock_mode::exclusive, 20ms), [] {});
            } catch (const ctxmgr::timeout_error& e) {
                say("  child: " + std::string(e.what()));
                code = 0;
            }
            std::fflush(stdout);
            ::_exit(code);
        }
        int status = 0;
        ::waitpid(child, &status, 0);
    });
    ctxmgr::with(ctxmgr::file_lock(path, ctxmgr::lock_mode::shared, 1s),
                 ctxmgr::file_lock(path, ctxmgr::lock_mode::shared, 1s),
                 [] { say("two shared holders of the same file at once: readers"); });
    say("the lock file stays (deleting it would break the exclusion); a holder killed by");
    say("SIGKILL releases it, since the kernel closes its open file description");
}

void order_checking() {
    if (!ctxmgr::lock_order_check_enabled) {
        say("this build has the lock-order checker compiled out (CTXMGR_LOCK_ORDER_CHECK=OFF,");
        say("the default preset); the debug, asan and tsan presets report, for example (wrapped):");
        say("  lock-order inversion (possible deadlock):");
        say("    now:     thread 1 takes std::mutex at 0x7ffd10 at app.cpp:20 in void g() while");
        say("             holding std::mutex at 0x7ffd38, taken at app.cpp:19 in void g()");
        say("    earlier: thread 1 took std::mutex at 0x7ffd38 at app.cpp:11 in void f() while");
        say("             holding std::mutex at 0x7ffd10, taken at app.cpp:10 in void f()");
        return;
    }
    std::mutex a, b;
    // This handler prints the report, then throws: the lock is not taken, and the exception
    // leaves the with() like any other (the default handler aborts instead).
    auto previous = ctxmgr::set_lock_order_handler([](std::string_view report) {
        say("the checker reports, though no deadlock happened (one thread):");
        say(report);
        throw std::logic_error("lock-order inversion");
    });
    ctxmgr::with(ctxmgr::lock(a), [&] { ctxmgr::with(ctxmgr::lock(b), [] {}); });
    try {
        ctxmgr::with(ctxmgr::lock(b), [&] { ctxmgr::with(ctxmgr::lock(a), [] {}); });
    } catch (const std::logic_error& e) {
        say(std::string("the handler threw \"") + e.what() + "\" before `a` was taken");
    }
    ctxmgr::set_lock_order_handler(std::move(previous));
    ctxmgr::forget_lock_order(a);
    ctxmgr::forget_lock_order(b);
}

void locks_chapter() {
    mutexes();
    say("");
    timeouts();
    say("");
    file_locks();
    say("");
    order_checking();
}

const bool registered = tour::add_chapter(
    80, "Locks: with lock, several at once, timeouts, across processes, lock order",
    &locks_chapter);

}  // namespace
