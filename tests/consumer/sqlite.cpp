// Uses ctxmgr::sqlite through the installed (or added) package; fails (exit 1) if anything
// is wrong.
#include <ctxmgr/sqlite.hpp>
#include <ctxmgr/with.hpp>

#include <cstdint>
#include <cstdio>
#include <string>

int main() {
    const auto total =
        ctxmgr::with(ctxmgr::sqlite::connect(":memory:"), [](ctxmgr::sqlite::connection& db) {
            db.execute("CREATE TABLE t (n INTEGER)");
            ctxmgr::with(db.transaction(), [](auto& tx) {
                for (int i = 1; i <= 3; ++i) tx.execute("INSERT INTO t VALUES ($1)", i);
            });
            return db.query_value<std::int64_t>("SELECT sum(n) FROM t");
        });
    if (total != 6) {
        std::printf("consumer_sqlite: wrong sum %lld\n", static_cast<long long>(total));
        return 1;
    }
    std::printf("consumer_sqlite: ok\n");
    return 0;
}
