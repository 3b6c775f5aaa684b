// ctxmgr/db/rows.hpp: the rows a query yields, read by db.hpp's rules.
//
// db::rows is an input range read as it is iterated (one pass, move-only); each db::row it
// yields is a view, valid until the iteration moves on. row.get<T>(column) converts by the
// rules of <ctxmgr/db.hpp> and throws db::conversion_error naming the column and the
// statement: no silent coercion. A row from query_one owns its data. Part of <ctxmgr/db.hpp>.
//
//   for (ctxmgr::db::row row : conn.query("SELECT id, name FROM t"))
//       names[row.get<std::int64_t>(0)] = row.get<std::string>("name");
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "../detail/db_values.hpp"
#include "../errors.hpp"

namespace ctxmgr::db {

// One row of a result. Rows yielded while iterating a db::rows are views: valid until the
// iteration moves on or the rows are destroyed (keep a value, not the row). A row returned
// by query_one owns its data and outlives the connection. Copyable; cheap for views.
class row {
  public:
    explicit row(const detail::cursor* source) noexcept : cursor_(source) {}
    explicit row(std::shared_ptr<const detail::cursor> owned) noexcept
        : cursor_(owned.get()), owner_(std::move(owned)) {}

    // The number of columns.
    [[nodiscard]] std::size_t size() const noexcept { return cursor_->columns(); }

    // The name of column `column`. Throws std::out_of_range past the last column.
    [[nodiscard]] std::string_view name(std::size_t column) const {
        check(column);
        return cursor_->name(column);
    }

    // The index of the first column named exactly `name`. Throws std::out_of_range, listing
    // the columns, when there is none.
    [[nodiscard]] std::size_t index(std::string_view name) const {
        const std::size_t n = cursor_->columns();
        for (std::size_t i = 0; i < n; ++i) {
            if (cursor_->name(i) == name) return i;
        }
        std::string columns;
        for (std::size_t i = 0; i < n; ++i) {
            if (i > 0) columns += ", ";
            columns += cursor_->name(i);
        }
        throw std::out_of_range("no column named \"" + std::string(name) + "\" (columns: " +
                                columns + ") in: " + error::shorten(std::string(cursor_->sql())));
    }

    [[nodiscard]] bool is_null(std::size_t column) const {
        check(column);
        return cursor_->is_null(column);
    }
    [[nodiscard]] bool is_null(std::string_view column) const { return is_null(index(column)); }

    // The value of a column as T (see the rules at the top of this header). Throws
    // std::out_of_range for a column that does not exist and db::conversion_error for a
    // value that is not a T (NULL into a non-optional included). A std::string_view is
    // valid as long as the row.
    template <class T>
    [[nodiscard]] T get(std::size_t column) const {
        check(column);
        return read<T>(column);
    }
    template <class T>
    [[nodiscard]] T get(std::string_view column) const {
        return read<T>(index(column));
    }

  private:
    void check(std::size_t column) const { detail::check_column(*cursor_, column); }
    template <class T>
    T read(std::size_t column) const {
        return detail::read_value<T>(*cursor_, column);
    }

    const detail::cursor* cursor_;
    std::shared_ptr<const detail::cursor> owner_;
};

// The rows of a query, read as they are iterated: an input range (one pass), move-only.
// Destroy it before the connection is closed; destroying it early ends the statement.
//   for (auto row : conn.query("SELECT a, b FROM t")) use(row.get<int>(0));
class rows {
  public:
    class iterator {
      public:
        using iterator_concept = std::input_iterator_tag;
        using value_type = row;
        using difference_type = std::ptrdiff_t;

        iterator() noexcept = default;
        row operator*() const noexcept { return row(owner_->cursor_.get()); }
        iterator& operator++() {
            owner_->advance();
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
            return it.at_end();
        }

      private:
        bool at_end() const noexcept { return owner_ == nullptr || !owner_->on_row_; }
        friend class rows;
        explicit iterator(rows* owner) noexcept : owner_(owner) {}
        rows* owner_ = nullptr;
    };

    explicit rows(detail::cursor_lease cursor) noexcept : cursor_(std::move(cursor)) {}
    rows(rows&&) noexcept = default;
    rows& operator=(rows&&) noexcept = default;
    ~rows() = default;

    // Fetches the first row on the first call; later calls continue where iteration is.
    [[nodiscard]] iterator begin() {
        if (!started_) {
            started_ = true;
            advance();
        }
        return iterator(this);
    }
    [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

    // The result's columns, available before and during iteration.
    [[nodiscard]] std::size_t columns() const noexcept {
        return cursor_.get() != nullptr ? cursor_->columns() : 0;
    }
    [[nodiscard]] std::string_view name(std::size_t column) const {
        if (column >= columns()) {
            throw std::out_of_range("column " + std::to_string(column) + " does not exist");
        }
        return cursor_->name(column);
    }

  private:
    void advance() {
        on_row_ = false;
        if (cursor_.get() == nullptr) return;
        try {
            on_row_ = cursor_->next();
        } catch (error& e) {
            e.name_operation("query");
            throw;
        }
    }

    detail::cursor_lease cursor_;
    bool started_ = false;
    bool on_row_ = false;
};

}  // namespace ctxmgr::db
