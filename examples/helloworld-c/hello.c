/* The program of the multi-stage example: built in one stage, run from another. */
#include <stdio.h>

int main(void)
{
    printf("Hello, World!\n");
    return 0;
}
