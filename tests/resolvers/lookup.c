/* Resolves one name through the C library's stub resolver (built with
 * musl-gcc -static by tests/tests/auto.rs) and prints its first address. */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>

int main(int argc, char **argv) {
    struct addrinfo hints, *res;
    char buf[INET6_ADDRSTRLEN];
    if (argc != 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 2;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], NULL, &hints, &res);
    if (rc != 0) {
        printf("error %s\n", gai_strerror(rc));
        return 1;
    }
    void *addr = res->ai_family == AF_INET
        ? (void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr
        : (void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr;
    inet_ntop(res->ai_family, addr, buf, sizeof buf);
    printf("%s\n", buf);
    freeaddrinfo(res);
    return 0;
}
