/* Test program for kestrel-symbols: "JIT" code in an anonymous executable
 * mapping, named by a perf map the program writes itself, like a runtime would. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void)
{
    size_t len = 4096;
    unsigned char *code = mmap(NULL, len, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(code, 0xc3, len); /* ret */
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
    FILE *map = fopen(path, "w");
    if (!map) {
        perror("fopen");
        return 1;
    }
    uintptr_t base = (uintptr_t)code;
    fprintf(map, "%lx 40 jit_method_one\n", (unsigned long)base);
    fprintf(map, "this line is not a perf map entry\n");
    fprintf(map, "%lx 40 Ljava/lang/String;::hashCode ()I\n", (unsigned long)(base + 0x40));
    fflush(map);
    printf("base %lx\n", (unsigned long)base);
    fflush(stdout);

    /* Each line on stdin appends one more method (and one malformed line). */
    char buf[64];
    unsigned long next = base + 0x80;
    while (fgets(buf, sizeof buf, stdin)) {
        fprintf(map, "%lx 40 jit_method_appended_%lx\n", next, next - base);
        fprintf(map, "%lx zz broken\n", next);
        fflush(map);
        printf("appended %lx\n", next);
        fflush(stdout);
        next += 0x40;
    }
    fclose(map);
    unlink(path);
    return 0;
}
