// ctxmgr/contextlib.hpp: the small managers of Python's contextlib.
//
//   closing(x)             calls x.close() on exit; refers to an lvalue, owns an rvalue
//   suppress<E...>()       swallows exceptions of the listed types (and derived ones)
//   nullcontext(), nullcontext(v)
//                          does nothing; enter() returns v (a stand-in manager)
//   redirect_stdout(os), redirect_stderr(os)
//                          points std::cout / std::cerr at os's buffer for the block
//   chdir(path)            changes the working directory, restores the old one on exit
//   decorate(factory, f)   a callable that runs f inside a fresh factory() manager per call
//
//   ctxmgr::with(ctxmgr::suppress<std::out_of_range>(), [&] { v.at(10); });  // no throw
//   std::ostringstream out;
//   ctxmgr::with(ctxmgr::redirect_stdout(out), [] { std::cout << "captured"; });
//   auto timed_parse = ctxmgr::decorate([] { return timer(); }, parse);
//
// redirect_stdout, redirect_stderr and chdir act in enter(): one made and never entered
// (`auto r = ctxmgr::redirect_stdout(out);`) changes nothing, and its destructor reports that
// to the unraisable hook with the line that made it (a protocol_error).
//
// Guarantees: suppress, nullcontext and redirect_* never throw. closing's exit throws what
// close() throws. chdir throws io_error naming the directory when it cannot change into it
// or back; if changing back fails while an exception is pending, that exception is nested
// in the io_error.
//
// Thread-safety: redirect_stdout, redirect_stderr and chdir change process-wide state, like
// their Python originals: they are not safe while other threads use std::cout, std::cerr
// or relative paths. The others are thread-compatible. redirect_* affect the C++ streams
// only, not C's stdout or the file descriptors (see file.hpp for those).
#pragma once

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <source_location>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/entry_check.hpp"
#include "errors.hpp"
#include "protocol.hpp"
#include "with.hpp"

namespace ctxmgr {

// Calls close() on exit, whatever happened: Python's contextlib.closing. enter() returns
// the thing. closing(x) refers to an lvalue x, which must outlive it, and owns an rvalue.
// exit throws what close() throws (replacing a pending exception).
template <class T>
class [[nodiscard]] closing {
  public:
    using thing_type = std::remove_reference_t<T>;
    static_assert(
        requires(thing_type & t) { t.close(); },
        "ctxmgr::closing: the object has no close() member");

    template <class U>
    requires std::is_constructible_v<T, U&&>
    explicit closing(U&& thing) noexcept(std::is_nothrow_constructible_v<T, U&&>)
        : thing_(std::forward<U>(thing)) {}

    thing_type& enter() noexcept { return thing_; }
    void exit(std::exception_ptr) { thing_.close(); }

  private:
    T thing_;
};

template <class T>
closing(T&&) -> closing<T>;

// Suppresses exceptions of the types E... (or derived from them) raised in the block;
// others propagate. Python's contextlib.suppress. With no types it suppresses nothing.
template <class... E>
class [[nodiscard]] suppress {
  public:
    void enter() noexcept {}
    bool exit(const std::exception_ptr& e) noexcept { return (holds<E>(e) || ...); }
};

// A manager that does nothing: a stand-in where a manager is optional. enter() returns the
// value given (a reference to it: an lvalue is referred to, an rvalue is kept), or nothing
// for nullcontext(). Its exit returns void: it never suppresses.
template <class T = void>
class [[nodiscard]] nullcontext {
  public:
    template <class U>
    requires std::is_constructible_v<T, U&&>
    explicit nullcontext(U&& value) noexcept(std::is_nothrow_constructible_v<T, U&&>)
        : value_(std::forward<U>(value)) {}

    std::remove_reference_t<T>& enter() noexcept { return value_; }
    void exit(const std::exception_ptr&) noexcept {}

  private:
    T value_;
};

template <>
class [[nodiscard]] nullcontext<void> {
  public:
    void enter() noexcept {}
    void exit(const std::exception_ptr&) noexcept {}
};

nullcontext()->nullcontext<void>;
template <class T>
nullcontext(T&&) -> nullcontext<T>;

namespace detail {

// Points a standard stream at another stream's buffer for the block. Reentrant: entering the
// same object again nests, and each exit restores what its enter replaced.
template <manager_name Name>
class redirect_stream {
  public:
    redirect_stream(std::ostream& stream, std::ostream& target, std::source_location where) noexcept
        : stream_(stream), target_(target), check_(where) {}

    std::ostream& enter() {
        check_.entered();
        previous_.reserve(previous_.size() + 1);  // the only step that can throw
        stream_.flush();
        previous_.push_back(stream_.rdbuf(target_.rdbuf()));
        return target_;
    }

    void exit(const std::exception_ptr&) noexcept {
        stream_.flush();
        stream_.rdbuf(previous_.back());
        previous_.pop_back();
    }

  private:
    std::ostream& stream_;
    std::ostream& target_;
    std::vector<std::streambuf*> previous_;
    [[no_unique_address]] entry_check<Name> check_;
};

}  // namespace detail

// Sends std::cout to `target` for the block (Python's contextlib.redirect_stdout); enter()
// returns target. std::cout is flushed on the way in and out.
class [[nodiscard]] redirect_stdout : public detail::redirect_stream<"redirect_stdout"> {
  public:
    explicit redirect_stdout(std::ostream& target,
                             std::source_location where = std::source_location::current()) noexcept
        : redirect_stream(std::cout, target, where) {}
};

// Sends std::cerr to `target` for the block (Python's contextlib.redirect_stderr).
class [[nodiscard]] redirect_stderr : public detail::redirect_stream<"redirect_stderr"> {
  public:
    explicit redirect_stderr(std::ostream& target,
                             std::source_location where = std::source_location::current()) noexcept
        : redirect_stream(std::cerr, target, where) {}
};

// Changes the working directory for the block and changes back on exit (Python 3.11's
// contextlib.chdir). Reentrant. Throws io_error ("chdir \"/x\": No such file or directory").
class [[nodiscard]] chdir {
  public:
    explicit chdir(std::filesystem::path path,
                   std::source_location where = std::source_location::current())
        : path_(std::move(path)), check_(where) {}

    void enter() {
        check_.entered();
        std::string current = current_directory();
        previous_.reserve(previous_.size() + 1);
        if (::chdir(path_.c_str()) != 0) throw io_error("chdir", path_.string(), errno);
        previous_.push_back(std::move(current));
    }

    void exit(const std::exception_ptr& e) {
        std::string back = std::move(previous_.back());
        previous_.pop_back();
        if (::chdir(back.c_str()) != 0) {
            throw_chained(io_error("chdir back to", std::move(back), errno), e);
        }
    }

  private:
    static std::string current_directory() {
        std::string buffer(PATH_MAX, '\0');
        while (::getcwd(buffer.data(), buffer.size()) == nullptr) {
            if (errno != ERANGE) throw io_error("getcwd", ".", errno);
            buffer.resize(buffer.size() * 2);
        }
        buffer.resize(std::char_traits<char>::length(buffer.c_str()));
        return buffer;
    }

    std::filesystem::path path_;
    std::vector<std::string> previous_;
    [[no_unique_address]] detail::entry_check<"chdir"> check_;
};

// Python's ContextDecorator: decorate(factory, f) returns a callable that, on every call,
// makes a fresh manager with factory() and runs f(args...) inside it with with()'s rules
// (so it returns std::optional when the manager may suppress). A fresh manager per call is
// what lets one-shot managers such as contextmanager<T> decorate.
template <class Factory, class F>
class [[nodiscard]] decorated {
  public:
    template <class G, class H>
    decorated(G&& factory, H&& function)
        : factory_(std::forward<G>(factory)), function_(std::forward<H>(function)) {}

    template <class... Args>
    decltype(auto) operator()(Args&&... args) {
        return call(factory_, function_, std::forward<Args>(args)...);
    }
    template <class... Args>
    decltype(auto) operator()(Args&&... args) const {
        return call(factory_, function_, std::forward<Args>(args)...);
    }

  private:
    template <class Fa, class Fn, class... Args>
    static decltype(auto) call(Fa& factory, Fn& function, Args&&... args) {
        static_assert(context_manager<std::invoke_result_t<Fa&>>,
                      "ctxmgr::decorate: factory() must return a context manager");
        return with(std::invoke(factory), [&]() -> decltype(auto) {
            return std::invoke(function, std::forward<Args>(args)...);
        });
    }

    Factory factory_;
    F function_;
};

template <class Factory, class F>
[[nodiscard]] decorated<std::decay_t<Factory>, std::decay_t<F>> decorate(Factory&& factory,
                                                                         F&& function) {
    return {std::forward<Factory>(factory), std::forward<F>(function)};
}

}  // namespace ctxmgr
