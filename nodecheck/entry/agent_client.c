/*
 * The agent's client, compiled: what the prolog/epilog/health entrypoints run when the
 * nodecheck agent's socket exists (nodecheck/entry/entrypoint.sh; docs/agent.md).
 *
 *   agent-client --socket PATH --python PYTHON PHASE
 *
 * It speaks the protocol of nodecheck/entry/agent_client.py, which stays the reference and
 * the fallback where this program was not built: connect; check that the agent runs as our
 * own user (SO_PEERCRED); wait for the forked worker's "ready"; send the phase and this
 * process's environment with our stdin/stdout/stderr (SCM_RIGHTS), so the worker logs to
 * slurmd exactly as an in-process run would; exit with the worker's exit code.
 *
 * Why a compiled client: an interpreter's start is the largest part of a job start served
 * by a warm agent (docs/performance.md). This program does nothing else: it reads no
 * config and judges nothing.
 *
 * If anything fails before the worker says "started", or the worker ends without an exit
 * code, it replaces itself with the in-process run (PYTHON -I -m nodecheck hook PHASE),
 * telling it why in NODECHECK_AGENT_UNAVAILABLE, which the hook logs as agent_unavailable:
 * the agent can make a job start faster, never less safe.
 *
 * Runs as root under slurmd: fixed-size buffers, every length checked, no shell.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_MAGIC "nodecheck-agent/1"
#define CONNECT_TIMEOUT_S 1
/* Accepting, forking and reading the request take milliseconds; an agent that says nothing
 * for this long is hung (stopped, stuck), and waiting on it would hang the job start. */
#define STARTED_TIMEOUT_S 3
#define MAX_REPLY 4096
#define MAX_REQUEST (1 << 20) /* as the agent's own limit: a prolog's environment is a few KiB */

extern char **environ;

static const char *phase;
static const char *python;
static struct timespec started; /* CLOCK_MONOTONIC: the in-process run reads the same clock */

/* Become the in-process run, telling it why the agent could not serve (never returns). */
static void run_here(const char *why)
{
    char *argv[] = {(char *)python, "-I", "-m", "nodecheck", "hook", (char *)phase, NULL};
    char when[64];
    setenv("NODECHECK_AGENT_UNAVAILABLE", why, 1);
    /* Its budget is what is left of ours (entry/hook.hook_started), not a new one. */
    snprintf(when, sizeof when, "%lld.%09ld", (long long)started.tv_sec, started.tv_nsec);
    setenv("NODECHECK_HOOK_STARTED", when, 1);
    execv(python, argv);
    /* Not even the in-process run can start: say so where slurmd keeps it, and let the
     * job start (nodecheck's own failure, judged as on_internal_error's default, pass). */
    fprintf(stderr,
            "{\"event\": \"agent_unavailable\", \"level\": \"error\", \"phase\": \"%s\", "
            "\"error\": \"cannot start %s: errno %d\"}\n",
            phase, python, errno);
    _exit(0);
}

static void give_up(const char *what, const char *detail)
{
    char why[512];
    snprintf(why, sizeof why, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
    run_here(why);
}

static void set_timeout(int fd, int seconds)
{
    struct timeval tv = {.tv_sec = seconds, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Read on into buf (NUL-terminated, at most MAX_REPLY - 1 bytes in all) until a newline,
 * or with to_eof until the end; returns the bytes it holds. A silent agent is a hung one:
 * give up after the socket's timeout. */
static size_t read_more(int fd, char *buf, size_t have, int to_eof)
{
    while (have < MAX_REPLY - 1 && (to_eof || !memchr(buf, '\n', have))) {
        ssize_t got = recv(fd, buf + have, MAX_REPLY - 1 - have, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            give_up("no answer from the agent within 3 s", NULL);
        if (got < 0)
            give_up("lost the agent", strerror(errno));
        if (got == 0)
            break;
        have += (size_t)got;
    }
    buf[have] = '\0';
    return have;
}

/* Send all of data; the descriptors ride with the first byte. */
static void send_request(int fd, const char *data, size_t len)
{
    int fds[3] = {0, 1, 2};
    char control[CMSG_SPACE(sizeof fds)];
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    ssize_t sent;
    while ((sent = sendmsg(fd, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    if (sent < 0)
        give_up("cannot send the request", strerror(errno));
    for (size_t done = (size_t)sent; done < len; done += (size_t)sent) {
        while ((sent = send(fd, data + done, len - done, MSG_NOSIGNAL)) < 0 && errno == EINTR)
            ;
        if (sent < 0)
            give_up("cannot send the request", strerror(errno));
    }
}

/* `nodecheck-agent/1 NUL phase NUL NAME=value NUL ...`: the environment as the kernel keeps
 * it (agent_client.request_bytes). */
static char *request_bytes(size_t *len)
{
    size_t size = sizeof REQUEST_MAGIC + strlen(phase) + 1;
    for (char **e = environ; *e; e++)
        size += strlen(*e) + 1;
    if (size > MAX_REQUEST)
        give_up("cannot send the request", "the environment is too large");
    char *out = malloc(size);
    if (!out)
        give_up("cannot send the request", "out of memory");
    size_t at = 0;
    const char *parts[2] = {REQUEST_MAGIC, phase};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(parts[i]) + 1;
        memcpy(out + at, parts[i], n);
        at += n;
    }
    for (char **e = environ; *e; e++) {
        size_t n = strlen(*e) + 1;
        memcpy(out + at, *e, n);
        at += n;
    }
    *len = at - 1; /* entries are separated by NUL, not terminated */
    return out;
}

/* `started\nexit N\n`: the worker's exit code, or -1 when it gave none. */
static int exit_code(const char *reply)
{
    for (const char *line = strchr(reply, '\n'); line; line = strchr(line, '\n')) {
        line++;
        if (strncmp(line, "exit ", 5) == 0) {
            char *end;
            long code = strtol(line + 5, &end, 10);
            if (end != line + 5 && (*end == '\n' || *end == '\0') && code >= 0 && code < 256)
                return (int)code;
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    if (argc != 6 || strcmp(argv[1], "--socket") || strcmp(argv[3], "--python") ||
        (strcmp(argv[5], "prolog") && strcmp(argv[5], "epilog") && strcmp(argv[5], "health")) ||
        argv[4][0] != '/') {
        fprintf(stderr, "usage: agent-client --socket PATH --python /PYTHON prolog|epilog|health\n");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &started);
    const char *path = argv[2];
    python = argv[4];
    phase = argv[5];

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        give_up("cannot connect to the agent", "socket path too long");
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        give_up("cannot connect to the agent", strerror(errno));
    set_timeout(fd, CONNECT_TIMEOUT_S);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        char what[300];
        snprintf(what, sizeof what, "cannot connect to %s", path);
        give_up(what, strerror(errno));
    }
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) < 0 || peer.uid != geteuid()) {
        char what[300];
        snprintf(what, sizeof what, "%s is served by another user", path);
        give_up(what, NULL);
    }

    /* Our stdout/stderr go only to a worker that has said "ready": descriptors queued at an
     * agent that never accepts would keep slurmd's pipes open after we are gone. */
    char reply[MAX_REPLY];
    set_timeout(fd, STARTED_TIMEOUT_S);
    size_t have = read_more(fd, reply, 0, 0);
    if (strncmp(reply, "ready\n", 6) != 0) {
        reply[strcspn(reply, "\n")] = '\0';
        give_up("agent refused the run", have ? reply : "the agent closed the connection");
    }
    size_t len;
    char *request = request_bytes(&len);
    send_request(fd, request, len);
    free(request);
    shutdown(fd, SHUT_WR); /* the request is complete */

    have = read_more(fd, reply, 0, 0);
    if (strncmp(reply, "started\n", 8) != 0) {
        reply[strcspn(reply, "\n")] = '\0';
        give_up("agent refused the run", have ? reply : "the agent closed the connection");
    }
    /* From "started" on, the worker's own deadlines bound the run, as in-process. */
    set_timeout(fd, 0);
    read_more(fd, reply, have, 1);
    close(fd);
    int code = exit_code(reply);
    if (code < 0)
        give_up("the agent's worker ended without an exit code", NULL);
    return code;
}
