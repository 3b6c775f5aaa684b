# Warnings for the project's own translation units (tests, benchmarks, examples, src/).
# Consumers of the installed targets get none of these: they are not part of the interface.
function(ctxmgr_warnings target)
    target_compile_options(${target} PRIVATE
        -Wall -Wextra -Wpedantic
        -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Woverloaded-virtual
        -Wconversion -Wsign-conversion -Wdouble-promotion
        -Wimplicit-fallthrough -Wmisleading-indentation)
endfunction()
