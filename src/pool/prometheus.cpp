// write_prometheus: pool_metrics in the Prometheus text exposition format, with
// OpenTelemetry's database-client names.
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "ctxmgr/pool.hpp"

namespace ctxmgr::detail {

namespace {

// Nanoseconds as exact decimal seconds ("0.000131072", "2", "-0.5"), so that a value parsed
// back is the one recorded.
void append_seconds(std::string& out, std::int64_t ns) {
    if (ns < 0) {
        out += '-';
        ns = -ns;  // a sum of durations is never near the minimum
    }
    out += std::to_string(ns / 1'000'000'000);
    std::int64_t fraction = ns % 1'000'000'000;
    if (fraction == 0) return;
    int digits = 9;
    while (fraction % 10 == 0) {
        fraction /= 10;
        --digits;
    }
    const std::string text = std::to_string(fraction);
    out += '.';
    out.append(static_cast<std::size_t>(digits) - text.size(), '0');
    out += text;
}

// `pool_name="..."` with the label value escaped as the text format asks.
std::string pool_label(const std::string& name) {
    std::string label = "pool_name=\"";
    for (const char c : name) {
        if (c == '\\') {
            label += "\\\\";
        } else if (c == '"') {
            label += "\\\"";
        } else if (c == '\n') {
            label += "\\n";
        } else {
            label += c;
        }
    }
    label += '"';
    return label;
}

void append_family(std::string& out, const char* name, const char* type, const char* help) {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}

void append_sample(std::string& out, const char* name, const std::string& labels,
                   const std::string& value) {
    out += name;
    out += '{';
    out += labels;
    out += "} ";
    out += value;
    out += '\n';
}

}  // namespace

void write_prometheus(std::ostream& out, const named_pool_metrics* pools, std::size_t count) {
    std::vector<std::string> labels;
    labels.reserve(count);
    for (std::size_t i = 0; i < count; ++i) labels.push_back(pool_label(*pools[i].name));
    std::string text;
    const auto gauge = [&](const char* name, const char* type, const char* help, auto value_of) {
        append_family(text, name, type, help);
        for (std::size_t i = 0; i < count; ++i) {
            append_sample(text, name, labels[i], std::to_string(value_of(pools[i].metrics)));
        }
    };
    append_family(text, "db_client_connection_count", "gauge",
                  "The number of connections that are currently in the state described by the "
                  "state label.");
    for (std::size_t i = 0; i < count; ++i) {
        append_sample(text, "db_client_connection_count", labels[i] + ",state=\"idle\"",
                      std::to_string(pools[i].metrics.idle));
        append_sample(text, "db_client_connection_count", labels[i] + ",state=\"used\"",
                      std::to_string(pools[i].metrics.used));
    }
    gauge("db_client_connection_max", "gauge", "The maximum number of open connections allowed.",
          [](const pool_metrics& m) { return m.max; });
    gauge("db_client_connection_pending_requests", "gauge",
          "The number of current pending requests for an open connection.",
          [](const pool_metrics& m) { return m.pending; });
    gauge("db_client_connection_timeouts_total", "counter",
          "The number of connection timeouts that have occurred trying to obtain a connection "
          "from the pool.",
          [](const pool_metrics& m) { return m.timeouts; });
    const auto histogram = [&](const char* family, const char* help,
                               pool_histogram pool_metrics::*member) {
        const std::string base = family;
        const std::string bucket = base + "_bucket";
        const std::string sum = base + "_sum";
        const std::string total = base + "_count";
        append_family(text, family, "histogram", help);
        for (std::size_t i = 0; i < count; ++i) {
            const pool_histogram& h = pools[i].metrics.*member;
            std::uint64_t cumulative = 0;
            for (std::size_t b = 0; b < pool_histogram::bucket_count; ++b) {
                cumulative += h.buckets[b];
                std::string le = labels[i] + ",le=\"";
                if (b + 1 < pool_histogram::bucket_count) {
                    append_seconds(le, pool_histogram::upper_bound(b).count());
                } else {
                    le += "+Inf";
                }
                le += '"';
                append_sample(text, bucket.c_str(), le, std::to_string(cumulative));
            }
            std::string seconds;
            append_seconds(seconds, h.sum.count());
            append_sample(text, sum.c_str(), labels[i], seconds);
            append_sample(text, total.c_str(), labels[i], std::to_string(h.count));
        }
    };
    histogram("db_client_connection_wait_time_seconds",
              "The time it took to obtain an open connection from the pool.",
              &pool_metrics::wait_time);
    histogram("db_client_connection_use_time_seconds",
              "The time between borrowing a connection and returning it to the pool.",
              &pool_metrics::use_time);
    histogram("db_client_connection_create_time_seconds",
              "The time it took to create a new connection.", &pool_metrics::create_time);
    out << text;
}

}  // namespace ctxmgr::detail
