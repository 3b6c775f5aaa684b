// The prepared statements a PostgreSQL connection keeps (internal to src/): by SQL text, one
// per list of parameter types, the least recently used forgotten beyond the capacity. The
// bookkeeping only: the blocking and the awaited connection each talk to the server themselves
// (PQprepare or PQsendPrepare, DEALLOCATE), so that a statement is prepared, and a forgotten
// one deallocated, the same way on both.
#pragma once

#include <libpq-fe.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "db/libpq_support.hpp"
#include "db/recent_statements.hpp"
#include "db/sql_text.hpp"

namespace ctxmgr::postgres::detail {

// A statement prepared on the server for one list of parameter types.
struct prepared {
    std::string name;
    std::vector<Oid> types;
    std::uint64_t last_used = 0;

    // Whether it was prepared for these parameter types. A loop, not vector's ==, which calls
    // memcmp for the one to three types a statement most often has.
    [[nodiscard]] bool takes(const std::vector<Oid>& given) const noexcept {
        if (given.size() != types.size()) return false;
        for (std::size_t i = 0; i < given.size(); ++i) {
            if (given[i] != types[i]) return false;
        }
        return true;
    }
};

// Throws db::error naming `sql` unless it has `given` parameters ($1, $2, ...).
inline void check_parameter_count(std::string_view sql, std::size_t given) {
    const std::size_t expected =
        db::detail::scan_parameters(sql, db::detail::dialect::postgresql).parameters;
    if (given == expected) return;
    throw db::error(std::string(backend_name), "", 0,
                    db::detail::wrong_parameter_count(given, expected), std::string(sql));
}

// True when `result` failed because the server no longer has the prepared statement (26000:
// DISCARD ALL, DEALLOCATE by hand) and no transaction was open that the error has now aborted
// (idle now means idle before: an error inside a transaction block leaves it failed). The
// statement may then be prepared again and sent once more.
inline bool forgotten_statement(PGconn* handle, const PGresult* result) noexcept {
    const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
    return PQtransactionStatus(handle) == PQTRANS_IDLE && state != nullptr &&
           std::strcmp(state, "26000") == 0;
}

class statement_cache {
  public:
    explicit statement_cache(std::size_t capacity) noexcept : capacity_(capacity) {}
    statement_cache(const statement_cache&) = delete;
    statement_cache& operator=(const statement_cache&) = delete;

    // 0: every statement is sent unprepared.
    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] std::size_t size() const noexcept { return cached_; }

    // The statement prepared for `sql` with these parameter types, marked as just used; nullptr
    // when there is none.
    prepared* find(std::string_view sql, const std::vector<Oid>& types) {
        entry* found = recent_.find(sql);
        if (found == nullptr) {
            const auto it = map_.find(sql);
            if (it == map_.end()) return nullptr;
            found = &*it;
            recent_.remember(sql, found);
        }
        for (prepared& p : found->second) {
            if (p.takes(types)) {
                p.last_used = ++clock_;
                return &p;
            }
        }
        return nullptr;
    }

    // A name no statement of this session has had. Called before preparing: a name taken by
    // a prepare that failed or was cancelled is never given again.
    std::string next_name() { return "ctxmgr_" + std::to_string(++names_); }

    // Before a statement is prepared: when the cache is full, the least recently used one is
    // forgotten and its name waits for take_deallocations().
    void make_room() {
        if (cached_ < capacity_) return;
        auto oldest = map_.end();
        std::size_t oldest_variant = 0;
        for (auto it = map_.begin(); it != map_.end(); ++it) {
            for (std::size_t v = 0; v < it->second.size(); ++v) {
                if (oldest == map_.end() ||
                    it->second[v].last_used < oldest->second[oldest_variant].last_used) {
                    oldest = it;
                    oldest_variant = v;
                }
            }
        }
        if (oldest == map_.end()) return;
        to_deallocate_.push_back(std::move(oldest->second[oldest_variant].name));
        erase(oldest, oldest_variant);
    }

    // Keeps a statement the server has just prepared as `name`.
    prepared& add(std::string_view sql, std::string name, std::vector<Oid> types) {
        std::vector<prepared>& variants = map_[std::string(sql)];
        variants.push_back(prepared{std::move(name), std::move(types), ++clock_});
        ++cached_;
        return variants.back();
    }

    // Forgets a statement the server no longer has (DISCARD ALL, DEALLOCATE by hand): nothing
    // to deallocate.
    void drop(std::string_view sql, const std::vector<Oid>& types) {
        const auto found = map_.find(sql);
        if (found == map_.end()) return;
        for (std::size_t v = 0; v < found->second.size(); ++v) {
            if (found->second[v].takes(types)) {
                erase(found, v);
                return;
            }
        }
    }

    // Whether forgotten statements wait to be deallocated on `handle` and can be now: not in a
    // failed transaction, which refuses DEALLOCATE, nor on a lost link.
    [[nodiscard]] bool deallocations_due(PGconn* handle) const noexcept {
        return !to_deallocate_.empty() && !lost(handle) &&
               PQtransactionStatus(handle) != PQTRANS_INERROR;
    }
    // The SQL that deallocates the forgotten statements ("DEALLOCATE a;DEALLOCATE b;"); they
    // are no longer waiting once it is taken.
    std::string take_deallocations() {
        std::string sql;
        for (const std::string& name : to_deallocate_) sql += "DEALLOCATE " + name + ';';
        to_deallocate_.clear();
        return sql;
    }

  private:
    using map = std::unordered_map<std::string, std::vector<prepared>, db::detail::string_hash,
                                   std::equal_to<>>;
    using entry = map::value_type;
    struct key_of {
        std::string_view operator()(const entry& e) const noexcept { return e.first; }
    };

    void erase(map::iterator it, std::size_t variant) {
        it->second.erase(it->second.begin() + static_cast<std::ptrdiff_t>(variant));
        --cached_;
        if (it->second.empty()) {
            recent_.forget(&*it);
            map_.erase(it);
        }
    }

    std::size_t capacity_;
    std::size_t cached_ = 0;
    std::uint64_t clock_ = 0;
    std::uint64_t names_ = 0;
    map map_;
    db::detail::recent_statements<entry, key_of> recent_;
    std::vector<std::string> to_deallocate_;
};

}  // namespace ctxmgr::postgres::detail
