#include <stdio.h>

#include "rpn.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: rpn 'EXPRESSION'\n");
        return 2;
    }
    double result;
    enum rpn_status status = rpn_eval(argv[1], &result);
    if (status != RPN_OK) {
        fprintf(stderr, "rpn: %s\n", rpn_status_text(status));
        return 1;
    }
    printf("%g\n", result);
    return 0;
}
