// A front for a connection's statement cache (internal to src/): the statements last found,
// by the address of their SQL text. A string literal passed again is found with one
// comparison of the text instead of hashing it (hashing was a third of ctxmgr's own cost on a
// SQLite point query). Always checked against the text itself, so a reused buffer holding
// other SQL is never mistaken for the statement last found there.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

namespace ctxmgr::db::detail {

// The statement caches' hash: looks up a std::string key by std::string_view, no copy.
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view text) const noexcept {
        return std::hash<std::string_view>()(text);
    }
};

// Entry: what the cache keeps per SQL text (a statement, or the map's node); KeyOf(entry)
// returns its SQL as a std::string_view.
template <class Entry, class KeyOf, std::size_t Slots = 16>
class recent_statements {
  public:
    // The entry remembered for `sql`, or nullptr.
    [[nodiscard]] Entry* find(std::string_view sql) const noexcept {
        Entry* entry = slots_[slot(sql.data())];
        return entry != nullptr && KeyOf()(*entry) == sql ? entry : nullptr;
    }
    void remember(std::string_view sql, Entry* entry) noexcept { slots_[slot(sql.data())] = entry; }
    // Before `entry` is destroyed.
    void forget(const Entry* entry) noexcept {
        for (Entry*& slot : slots_) {
            if (slot == entry) slot = nullptr;
        }
    }
    void clear() noexcept { slots_.fill(nullptr); }

  private:
    static std::size_t slot(const char* text) noexcept {
        return (reinterpret_cast<std::uintptr_t>(text) >> 3) % Slots;
    }

    std::array<Entry*, Slots> slots_{};
};

}  // namespace ctxmgr::db::detail
