/* openloop: a small open-loop HTTP/1.1 load generator for the latency arm of bench/http_overhead.py.
 *
 *   openloop --host 127.0.0.1 --port P [--path /] [--rate 2000] [--duration 10] [--connections 4]
 *            [--warmup 1] [--timeout 2]
 *
 * Request i (counted over warm-up and measurement together) is due at t0 + i/rate and goes out on
 * keep-alive connection i % connections. A connection carries one request at a time (no pipelining):
 * if its previous response is still outstanding when the next request falls due, that request is sent
 * as soon as the response has arrived. Latency is measured from the request's *scheduled* time to the
 * end of its response, so a stall anywhere (server, client, scheduler) shows up as latency instead of
 * silently thinning the load (no coordinated omission). A send more than 1 ms after its schedule counts
 * as a late send.
 *
 * One thread, epoll, non-blocking sockets, CLOCK_MONOTONIC; between due times it sleeps in epoll_wait on
 * an absolute timerfd (timer slack set to 1 ns), never spinning. Responses are framed from the status
 * line and Content-Length; a chunked response is a fatal error (nginx's static file is never chunked).
 * Only warm-up requests (the first rate*warmup) are not recorded. The run ends by itself: after the
 * last request's due time it waits at most --timeout seconds for outstanding responses.
 *
 * Output: one line on stdout,
 *   openloop: scheduled=N sent=N completed=N errors=N timeouts=N non2xx=N late_sends=N warmup=N
 *             rate=R connections=C mean_us=.. p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=..
 *             lag_p99_us=.. lag_max_us=..
 * (counts and percentiles over the measured requests; lag = actual send time - scheduled time).
 * Exit 0 if every measured request completed without an error, 1 otherwise, 2 on a usage or fatal error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 256
#define MAX_REQUESTS 10000000ULL /* measured + warm-up; bounds memory (16 bytes per measured request) */
#define HEAD_MAX 16384
#define LATE_NS 1000000ULL
#define NEVER UINT64_MAX

struct conn {
    int fd;
    uint64_t next;       /* index of the next request this connection sends (k, k+C, k+2C, ...) */
    int busy;            /* a request is outstanding */
    uint64_t cur;        /* its index */
    uint64_t cur_due;    /* its scheduled time */
    size_t wr_off;       /* bytes of the request written so far */
    char head[HEAD_MAX]; /* response header bytes collected so far */
    size_t head_len;
    int in_body;
    uint64_t body_left;
    int status;
    int close_after;     /* the server said Connection: close */
};

static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_path = "/";
static double opt_rate = 2000, opt_duration = 10, opt_warmup = 1, opt_timeout = 2;
static int opt_connections = 4;

static char request[2048];
static size_t request_len;
static struct sockaddr_in addr;
static int epfd, tfd;

static uint64_t t0, total, warm, measured;
static double interval_ns;
static uint64_t *lat_ns, *lag_ns; /* per completed / per sent measured request */
static uint64_t n_sent, n_completed, n_errors, n_timeouts, n_non2xx, n_late, n_lag, n_warm_done;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t due_ns(uint64_t i) { return t0 + (uint64_t)((double)i * interval_ns); }

static void die(const char *msg) {
    fprintf(stderr, "openloop: error: %s\n", msg);
    exit(2);
}

static void die_errno(const char *what) {
    fprintf(stderr, "openloop: error: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void) {
    fprintf(stderr, "usage: openloop --host H --port P [--path /] [--rate 2000] [--duration 10]"
                    " [--connections 4] [--warmup 1] [--timeout 2]\n");
    exit(2);
}

static double number(const char *name, const char *value) {
    char *end;
    double v = strtod(value, &end);
    if (*value == '\0' || *end != '\0' || v != v) {
        fprintf(stderr, "openloop: error: %s: not a number: %s\n", name, value);
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host"))
            opt_host = v;
        else if (!strcmp(a, "--port"))
            opt_port = (int)number(a, v);
        else if (!strcmp(a, "--path"))
            opt_path = v;
        else if (!strcmp(a, "--rate"))
            opt_rate = number(a, v);
        else if (!strcmp(a, "--duration"))
            opt_duration = number(a, v);
        else if (!strcmp(a, "--connections"))
            opt_connections = (int)number(a, v);
        else if (!strcmp(a, "--warmup"))
            opt_warmup = number(a, v);
        else if (!strcmp(a, "--timeout"))
            opt_timeout = number(a, v);
        else
            usage();
    }
    if (opt_port <= 0 || opt_port > 65535)
        die("--port must be 1..65535");
    if (!(opt_rate > 0 && opt_rate <= 1e6))
        die("--rate must be in (0, 1e6]");
    if (!(opt_duration > 0 && opt_duration <= 3600) || !(opt_warmup >= 0 && opt_warmup <= 3600))
        die("--duration must be in (0, 3600], --warmup in [0, 3600]");
    if (!(opt_timeout >= 0 && opt_timeout <= 600))
        die("--timeout must be in [0, 600]");
    if (opt_connections < 1 || opt_connections > MAX_CONNECTIONS)
        die("--connections must be 1..256");
    if (opt_path[0] != '/' || strpbrk(opt_path, " \r\n"))
        die("--path must start with / and contain no spaces or line breaks");
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &addr.sin_addr) != 1)
        die("--host must be an IPv4 address");
}

static int open_conn(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* blocking connect (loopback: immediate), then non-blocking for the run */
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return -1;
    }
    if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void watch(struct conn *c, uint32_t k, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u32 = k};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0)
        die_errno("epoll_ctl");
}

static void reset_response(struct conn *c) {
    c->head_len = 0;
    c->in_body = 0;
    c->body_left = 0;
    c->status = 0;
    c->close_after = 0;
}

/* Drop the connection (its outstanding request, if any, counts as an error) and open a new one. */
static void reconnect(struct conn *conns, uint32_t k, int count_error) {
    struct conn *c = &conns[k];
    if (c->busy && count_error)
        n_errors++;
    c->busy = 0;
    reset_response(c);
    if (c->fd >= 0)
        close(c->fd); /* also removes it from the epoll set */
    c->fd = open_conn();
    if (c->fd < 0) {
        fprintf(stderr, "openloop: connection %u: reconnect failed: %s\n", k, strerror(errno));
        return;
    }
    watch(c, k, EPOLL_CTL_ADD, EPOLLIN);
}

static void send_next(struct conn *conns, uint32_t k, uint64_t now) {
    struct conn *c = &conns[k];
    c->busy = 1;
    c->cur = c->next;
    c->cur_due = due_ns(c->cur);
    c->next += (uint64_t)opt_connections;
    c->wr_off = 0;
    reset_response(c);
    if (c->cur >= warm) {
        n_sent++;
        uint64_t lag = now > c->cur_due ? now - c->cur_due : 0;
        if (lag > LATE_NS)
            n_late++;
        lag_ns[n_lag++] = lag;
    }
    ssize_t w = write(c->fd, request, request_len);
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        fprintf(stderr, "openloop: connection %u: write: %s\n", k, strerror(errno));
        reconnect(conns, k, 1);
        return;
    }
    c->wr_off = w > 0 ? (size_t)w : 0;
    if (c->wr_off < request_len)
        watch(c, k, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
}

static void finish_write(struct conn *conns, uint32_t k) {
    struct conn *c = &conns[k];
    ssize_t w = write(c->fd, request + c->wr_off, request_len - c->wr_off);
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        fprintf(stderr, "openloop: connection %u: write: %s\n", k, strerror(errno));
        reconnect(conns, k, 1);
        return;
    }
    c->wr_off += (size_t)w;
    if (c->wr_off == request_len)
        watch(c, k, EPOLL_CTL_MOD, EPOLLIN);
}

/* Parse a complete header block (c->head[0..end), ending in CRLFCRLF). 0 on success, -1 if malformed. */
static int parse_head(uint32_t k, struct conn *c, size_t end) {
    c->head[end - 2] = '\0'; /* "...last: v\r\n\r\n" -> "...last: v\r\n": each line ends in CRLF */
    char *line = c->head;
    char *eol = strstr(line, "\r\n");
    if (!eol)
        return -1;
    *eol = '\0';
    int major, minor, status;
    if (sscanf(line, "HTTP/%d.%d %3d", &major, &minor, &status) != 3 || status < 100 || status > 599) {
        fprintf(stderr, "openloop: connection %u: bad status line: %.80s\n", k, line);
        return -1;
    }
    if (status < 200) {
        fprintf(stderr, "openloop: connection %u: 1xx responses are not supported\n", k);
        return -1;
    }
    c->status = status;
    int have_length = 0;
    uint64_t length = 0;
    c->close_after = major == 1 && minor == 0;
    for (line = eol + 2; *line; line = eol + 2) {
        eol = strstr(line, "\r\n"); /* every header line still ends in CRLF (see above) */
        if (!eol)
            return -1;
        *eol = '\0';
        char *colon = strchr(line, ':');
        if (colon) {
            *colon = '\0';
            char *value = colon + 1;
            while (*value == ' ' || *value == '\t')
                value++;
            if (!strcasecmp(line, "content-length")) {
                char *stop;
                errno = 0;
                unsigned long long v = strtoull(value, &stop, 10);
                if (errno || stop == value || (*stop && *stop != ' ' && *stop != '\t')) {
                    fprintf(stderr, "openloop: connection %u: bad Content-Length: %.40s\n", k, value);
                    return -1;
                }
                have_length = 1;
                length = v;
            } else if (!strcasecmp(line, "transfer-encoding")) {
                fprintf(stderr, "openloop: error: connection %u: Transfer-Encoding: %.40s responses are not"
                                " supported (only Content-Length framing)\n", k, value);
                exit(2);
            } else if (!strcasecmp(line, "connection")) {
                if (strcasestr(value, "close"))
                    c->close_after = 1;
                else if (strcasestr(value, "keep-alive"))
                    c->close_after = 0;
            }
        }
    }
    if (!have_length) {
        if (status == 204 || status == 304) {
            length = 0;
        } else {
            fprintf(stderr, "openloop: error: connection %u: response without Content-Length (status %d)\n",
                    k, status);
            exit(2);
        }
    }
    c->in_body = 1;
    c->body_left = length;
    return 0;
}

/* The outstanding response has ended at `now`. Returns 1 if the connection was replaced. */
static int complete(struct conn *conns, uint32_t k, uint64_t now) {
    struct conn *c = &conns[k];
    c->busy = 0;
    if (c->cur >= warm) {
        lat_ns[n_completed++] = now - c->cur_due;
        if (c->status < 200 || c->status > 399)
            n_non2xx++;
    } else {
        n_warm_done++;
    }
    int close_after = c->close_after;
    reset_response(c);
    if (close_after)
        reconnect(conns, k, 0);
    return close_after;
}

static void on_readable(struct conn *conns, uint32_t k) {
    struct conn *c = &conns[k];
    char buf[65536];
    for (;;) {
        ssize_t r = read(c->fd, buf, sizeof buf);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            fprintf(stderr, "openloop: connection %u: read: %s\n", k, strerror(errno));
            reconnect(conns, k, 1);
            return;
        }
        uint64_t t = now_ns();
        if (r == 0) {
            if (c->busy)
                fprintf(stderr, "openloop: connection %u: server closed it mid-response\n", k);
            reconnect(conns, k, 1);
            return;
        }
        size_t off = 0, n = (size_t)r;
        while (off < n) {
            if (!c->busy) {
                fprintf(stderr, "openloop: connection %u: %zu unexpected bytes with no request outstanding\n",
                        k, n - off);
                reconnect(conns, k, 1);
                n_errors++;
                return;
            }
            if (!c->in_body) {
                size_t take = n - off;
                if (take > HEAD_MAX - 1 - c->head_len)
                    take = HEAD_MAX - 1 - c->head_len;
                size_t start = c->head_len >= 3 ? c->head_len - 3 : 0;
                memcpy(c->head + c->head_len, buf + off, take);
                c->head_len += take;
                c->head[c->head_len] = '\0';
                char *end = memmem(c->head + start, c->head_len - start, "\r\n\r\n", 4);
                if (!end) {
                    if (c->head_len >= HEAD_MAX - 1) {
                        fprintf(stderr, "openloop: connection %u: response header over %d bytes\n", k,
                                HEAD_MAX);
                        reconnect(conns, k, 1);
                        return;
                    }
                    off += take;
                    continue;
                }
                size_t head_end = (size_t)(end - c->head) + 4;
                /* bytes of this read past the header are body (or the next response: an error) */
                off += take - (c->head_len - head_end);
                if (parse_head(k, c, head_end) < 0) {
                    reconnect(conns, k, 1);
                    return;
                }
            }
            uint64_t avail = n - off;
            uint64_t use = avail < c->body_left ? avail : c->body_left;
            c->body_left -= use;
            off += use;
            if (c->body_left == 0 && complete(conns, k, t))
                return;
        }
        if ((size_t)r < sizeof buf)
            return; /* drained (the next read would be EAGAIN) */
    }
}

static void arm_timer(uint64_t at) {
    static uint64_t armed = 0;
    if (at == armed)
        return;
    armed = at;
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(at / 1000000000ULL);
    its.it_value.tv_nsec = (long)(at % 1000000000ULL);
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        die_errno("timerfd_settime");
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* nearest rank: the smallest value with at least q of the sample at or below it */
static double rank_us(const uint64_t *sorted, uint64_t n, double q) {
    if (n == 0)
        return 0.0;
    uint64_t r = (uint64_t)(q * (double)n + 0.999999);
    if (r < 1)
        r = 1;
    if (r > n)
        r = n;
    return (double)sorted[r - 1] / 1000.0;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake at the due time, not up to 50 µs later */

    warm = (uint64_t)(opt_rate * opt_warmup + 0.5);
    measured = (uint64_t)(opt_rate * opt_duration + 0.5);
    if (measured == 0)
        die("--rate * --duration is below one request");
    total = warm + measured;
    if (total > MAX_REQUESTS)
        die("--rate * (--duration + --warmup) is over 10 million requests");
    interval_ns = 1e9 / opt_rate;
    lat_ns = calloc(measured, sizeof *lat_ns);
    lag_ns = calloc(measured, sizeof *lag_ns);
    struct conn *conns = calloc((size_t)opt_connections, sizeof *conns);
    if (!lat_ns || !lag_ns || !conns)
        die("out of memory");

    int n = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: openloop\r\n\r\n",
                     opt_path, opt_host, opt_port);
    if (n <= 0 || (size_t)n >= sizeof request)
        die("--path too long");
    request_len = (size_t)n;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0)
        die_errno("epoll_create1/timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev) < 0)
        die_errno("epoll_ctl(timerfd)");
    for (int k = 0; k < opt_connections; k++) {
        conns[k].fd = open_conn();
        if (conns[k].fd < 0)
            die_errno("connect");
        conns[k].next = (uint64_t)k;
        watch(&conns[k], (uint32_t)k, EPOLL_CTL_ADD, EPOLLIN);
    }

    t0 = now_ns() + 10000000ULL; /* first request 10 ms from now */
    uint64_t last_due = due_ns(total - 1);
    uint64_t deadline = last_due + (uint64_t)(opt_timeout * 1e9);
    struct epoll_event events[MAX_CONNECTIONS + 1];

    for (;;) {
        uint64_t now = now_ns();
        uint64_t wake = NEVER;
        int pending = 0;
        for (int k = 0; k < opt_connections; k++) {
            struct conn *c = &conns[k];
            if (c->fd < 0) {
                if (c->next < total)
                    reconnect(conns, (uint32_t)k, 0); /* retried at most once per wake-up */
                if (c->fd < 0)
                    continue;
            }
            if (!c->busy && c->next < total) {
                uint64_t due = due_ns(c->next);
                if (due <= now) {
                    send_next(conns, (uint32_t)k, now);
                    now = now_ns();
                }
            }
            if (c->busy)
                pending = 1;
            else if (c->next < total) {
                pending = 1;
                uint64_t due = due_ns(c->next);
                if (due < wake)
                    wake = due;
            }
        }
        if (!pending)
            break;
        if (now >= deadline) {
            for (int k = 0; k < opt_connections; k++)
                if (conns[k].busy && conns[k].cur >= warm)
                    n_timeouts++;
            break;
        }
        if (wake > deadline)
            wake = deadline;
        if (wake <= now)
            continue;
        arm_timer(wake);
        int ready = epoll_wait(epfd, events, MAX_CONNECTIONS + 1, -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            die_errno("epoll_wait");
        }
        for (int e = 0; e < ready; e++) {
            uint32_t k = events[e].data.u32;
            if (k == UINT32_MAX) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die_errno("read(timerfd)");
                continue;
            }
            struct conn *c = &conns[k];
            if (c->fd < 0)
                continue;
            if (events[e].events & EPOLLOUT)
                finish_write(conns, k);
            if (c->fd >= 0 && (events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(conns, k);
        }
    }

    uint64_t m = n_completed;
    double sum = 0;
    for (uint64_t i = 0; i < m; i++)
        sum += (double)lat_ns[i];
    qsort(lat_ns, m, sizeof *lat_ns, cmp_u64);
    qsort(lag_ns, n_lag, sizeof *lag_ns, cmp_u64);
    printf("openloop: scheduled=%llu sent=%llu completed=%llu errors=%llu timeouts=%llu non2xx=%llu "
           "late_sends=%llu warmup=%llu rate=%g connections=%d mean_us=%.1f p50_us=%.1f p90_us=%.1f "
           "p99_us=%.1f p999_us=%.1f max_us=%.1f lag_p99_us=%.1f lag_max_us=%.1f\n",
           (unsigned long long)measured, (unsigned long long)n_sent, (unsigned long long)n_completed,
           (unsigned long long)n_errors, (unsigned long long)n_timeouts, (unsigned long long)n_non2xx,
           (unsigned long long)n_late, (unsigned long long)n_warm_done, opt_rate, opt_connections,
           m ? sum / (double)m / 1000.0 : 0.0, rank_us(lat_ns, m, 0.50), rank_us(lat_ns, m, 0.90),
           rank_us(lat_ns, m, 0.99), rank_us(lat_ns, m, 0.999), m ? (double)lat_ns[m - 1] / 1000.0 : 0.0,
           rank_us(lag_ns, n_lag, 0.99), n_lag ? (double)lag_ns[n_lag - 1] / 1000.0 : 0.0);
    fflush(stdout);
    for (int k = 0; k < opt_connections; k++)
        if (conns[k].fd >= 0)
            close(conns[k].fd);
    return (n_completed == measured && n_errors == 0 && n_timeouts == 0) ? 0 : 1;
}
