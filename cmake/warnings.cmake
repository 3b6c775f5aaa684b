# Warnings for the project's own translation units (tests, benchmarks, examples, src/).
# Consumers of the installed targets get none of these: they are not part of the interface.
function(ctxmgr_warnings target)
    target_compile_options(${target} PRIVATE
        -Wall -Wextra -Wpedantic
        -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Woverloaded-virtual
        -Wconversion -Wsign-conversion -Wdouble-promotion
        -Wimplicit-fallthrough -Wmisleading-indentation)
endfunction()

# For a target that includes Asio's headers, under GCC: Asio's std::atomic_thread_fence makes
# GCC warn under -fsanitize=thread (-Wtsan), and GCC 12 at -O1 (the sanitizer presets) sees a
# std::optional in Asio's co_spawn binder as maybe uninitialized. Neither is in ctxmgr's code.
function(ctxmgr_asio_warnings target)
    target_compile_options(${target} PRIVATE
        $<$<CXX_COMPILER_ID:GNU>:-Wno-tsan -Wno-maybe-uninitialized>)
endfunction()
